package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/stream"
	"github.com/tpconvert/tpconvert/tensor"
)

// sizeFlag is a byte count given as 512MiB, 4GiB, 5GB, 1.5G or 1048576.
type sizeFlag int64

func (s *sizeFlag) String() string { return human(int64(*s)) }

func (s *sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	*s = sizeFlag(n)
	return nil
}

var units = []struct {
	suffix string
	mult   float64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40}, {"b", 1},
}

func parseSize(v string) (int64, error) {
	s := strings.ToLower(strings.TrimSpace(v))
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || f*mult > 1<<62 {
		return 0, fmt.Errorf("invalid size %q (want e.g. 512MiB, 4GiB, 5GB)", v)
	}
	return int64(f * mult), nil
}

// defaultMaxMemory is a quarter of the machine's RAM, at least 256 MiB.
func defaultMaxMemory() int64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 2 << 30
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "MemTotal:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return max(kb*1024/4, 256<<20)
		}
	}
	return 2 << 30
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// progress draws a progress bar on stderr when it is a terminal.
type progress struct {
	mu  sync.Mutex
	bar *progressbar.ProgressBar
	w   io.Writer
	on  bool
	job string
}

func newProgress(w io.Writer, job string, quiet bool) *progress {
	p := &progress{w: w, job: job}
	if f, ok := w.(*os.File); ok && !quiet && term.IsTerminal(int(f.Fd())) {
		p.on = true
	}
	return p
}

func (p *progress) start(total int64) {
	if !p.on {
		return
	}
	p.bar = newBar(p.w, total, p.job)
}

// newBar is the progress bar of every phase: bytes in MiB like the
// summary, rate and time left, drawn (and its clock started) at once.
func newBar(w io.Writer, total int64, desc string) *progressbar.ProgressBar {
	return progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionSetWidth(30),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSetRenderBlankState(true),
	)
}

func (p *progress) add(_ tensor.Info, n int64) {
	if p.bar == nil {
		return
	}
	p.mu.Lock()
	p.bar.Add64(n)
	p.mu.Unlock()
}

func (p *progress) finish() {
	if p.bar != nil {
		p.bar.Finish()
		p.bar.Clear()
	}
}

// printTensors writes one line per tensor of r.
func printTensors(w io.Writer, r *convert.Report) {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', tabwriter.AlignRight)
	// A planned file adds each tensor's payload rate and, where the plan
	// recorded one, its estimated weighted SQNR.
	planned := false
	for _, t := range r.Tensors {
		planned = planned || t.PayloadBPW > 0
	}
	head := "tensor\tdtype\tshape\tcodec\tstored\tbits/w\tratio\trel.err\tSQNR dB\t"
	if planned {
		head += "payload b/w\test.wSQNR dB\t"
	}
	fmt.Fprintln(tw, head)
	for _, t := range r.Tensors {
		re, sq := "", ""
		if t.RelErr != nil {
			re = fmt.Sprintf("%.4f", *t.RelErr)
			sq = fmtSQNR(*t.SQNRdB)
		}
		c := t.Codec
		if c == "" {
			c = "-"
		}
		if params := convert.TensorConfig(t.Params); params != "" && params != r.Params {
			c += " " + params
		}
		if t.Note != "" {
			c += " (" + t.Note + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.3f\t%.1f%%\t%s\t%s\t", t.Name, t.DType, fmtShape(t.Shape), c, human(t.StoredBytes), t.BPW, 100*t.Ratio, re, sq)
		if planned {
			rate, est := "", ""
			if t.PayloadBPW > 0 {
				rate = fmt.Sprintf("%.3f", t.PayloadBPW)
			}
			if t.EstSQNRdB != nil {
				est = fmtSQNR(*t.EstSQNRdB)
			}
			fmt.Fprintf(tw, "%s\t%s\t", rate, est)
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	fmt.Fprintln(w)
}

// fmtSQNR formats an SQNR in dB; an exact reconstruction (stored as
// 999 dB, see formats/tpk) reads "exact".
func fmtSQNR(db float64) string {
	if db >= 999 {
		return "exact"
	}
	return fmt.Sprintf("%.1f", db)
}

func fmtShape(s []int64) string {
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = strconv.FormatInt(d, 10)
	}
	return "[" + strings.Join(parts, "x") + "]"
}

// printReport renders a conversion or inspection summary as text: the
// totals, and with table every tensor's line.
func printReport(w io.Writer, r *convert.Report, table bool) {
	if table {
		printTensors(w, r)
	}
	tt := r.Totals
	fmt.Fprintf(w, "%s", r.Input)
	if r.Output != "" {
		fmt.Fprintf(w, " -> %s", r.Output)
	}
	if r.Kind != "" {
		fmt.Fprintf(w, " (%s)", r.Kind)
	}
	fmt.Fprintln(w)
	if r.Codec != "" {
		fmt.Fprintf(w, "  codec            %s %s\n", r.Codec, r.Params)
	}
	if rr := r.Rate; rr != nil {
		fmt.Fprintf(w, "  rate control     target %s", human(rr.TargetBytes))
		if rr.RequestedBPW > 0 {
			fmt.Fprintf(w, " (%g bits/parameter)", rr.RequestedBPW)
		}
		est := fmtSQNR(rr.EstSQNRdB)
		if est != "exact" {
			est += " dB"
		}
		fmt.Fprintf(w, "; compressed payloads %s of a %s budget; estimated mean weighted SQNR %s; planned in %.1fs\n",
			human(rr.PayloadBytes), human(rr.BudgetBytes), est, rr.PlanSeconds)
	}
	if len(r.Allocation) > 0 {
		fmt.Fprintf(w, "  allocation       ")
		for i, a := range r.Allocation {
			if i > 0 {
				fmt.Fprintf(w, "\n                   ")
			}
			bpw := 0.0
			if a.Params > 0 {
				bpw = float64(a.Bytes) * 8 / float64(a.Params)
			}
			fmt.Fprintf(w, "%-16s %3d tensors  %11d weights  %6.3f bits/w", a.Config, a.Tensors, a.Params, bpw)
		}
		fmt.Fprintln(w)
	}
	if r.Output != "" || strings.HasPrefix(r.Kind, "tpk") {
		fmt.Fprintf(w, "  tensors          %d (%d compressed, %d stored unchanged)\n", tt.Tensors, tt.Compressed, tt.PassedThrough)
		if n := notShrunk(r); n > 0 {
			fmt.Fprintf(w, "                   %d selected tensors stored unchanged: the codec would not make them smaller (-v lists them)\n", n)
		}
		fmt.Fprintf(w, "  parameters       %d (%d in compressed tensors)\n", tt.Params, tt.CompressedParams)
		if tt.Lossless > 0 {
			fmt.Fprintf(w, "  lossless         %d tensors bit-exact, %s -> %s (%.1f%%)\n", tt.Lossless,
				human(tt.LosslessSourceBytes), human(tt.LosslessStoredBytes), 100*float64(tt.LosslessStoredBytes)/float64(max(tt.LosslessSourceBytes, 1)))
		}
	} else {
		fmt.Fprintf(w, "  tensors          %d\n", tt.Tensors)
		fmt.Fprintf(w, "  parameters       %d\n", tt.Params)
	}
	if r.Output != "" {
		fmt.Fprintf(w, "  bytes            %s in, %s out\n", human(tt.BytesIn), human(tt.BytesOut))
	} else {
		fmt.Fprintf(w, "  bytes            %s\n", human(tt.BytesOut))
	}
	fmt.Fprintf(w, "  bits/weight      %.3f all-in (whole file)", tt.BPWAll)
	if tt.CompressedParams > 0 {
		fmt.Fprintf(w, "; %.3f over the compressed tensors", tt.BPWCompressed)
	}
	fmt.Fprintln(w)
	if r.Output != "" || strings.HasPrefix(r.Kind, "tpk") {
		fmt.Fprintf(w, "  ratio            %.2fx vs FP16, %.2fx vs source", tt.RatioFP16, tt.RatioSource)
		if tt.RatioSource > 0 {
			fmt.Fprintf(w, " (%.1f%% of the source)", 100/tt.RatioSource)
		}
		fmt.Fprintln(w)
	} else {
		fmt.Fprintf(w, "  ratio            %.2fx vs FP16\n", tt.RatioFP16)
	}
	if r.Output != "" && tt.BytesOut > tt.BytesIn {
		fmt.Fprintf(w, "  warning          the output is larger than the input (%s > %s): choose a smaller size with --bpw or --target-size\n", human(tt.BytesOut), human(tt.BytesIn))
	}
	if tt.WallSeconds > 0 {
		fmt.Fprintf(w, "  time             %.1fs, peak memory %s\n", tt.WallSeconds, human(tt.PeakRSSBytes))
	}
}

// notShrunk counts the tensors r reports as stored unchanged because the
// codec would have made them larger (stream.Result.Note).
func notShrunk(r *convert.Report) int {
	n := 0
	for _, t := range r.Tensors {
		if strings.Contains(t.Note, stream.NoteNotSmaller) {
			n++
		}
	}
	return n
}

func cmdCodecs(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	for _, n := range codec.Names() {
		mark := ""
		if n == codec.Default() {
			mark = " (default)"
		}
		fmt.Fprintf(tw, "%s\t%s%s\n", n, codec.Doc(n), mark)
	}
	return tw.Flush()
}
