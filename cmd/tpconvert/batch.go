package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/tpconvert/tpconvert/batch"
	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/stream"
)

const batchSynopsis = "tpconvert batch SRC... -o OUTDIR [flags]"

func cmdBatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("batch", batchSynopsis, stdout)
	out := fs.String("o", "", "output directory: one subdirectory per model (required)")
	cf := addConvFlags(fs, "tensors processed in parallel (weight files are converted one after another)",
		"bound on working memory for the whole batch, e.g. 512MiB or 4GiB; the default is a quarter of RAM")
	shard := fs.String("shard", "", "convert only shard I of N, written I/N with 0 <= I < N")
	fromEnv := fs.Bool("shard-from-env", false, "take the shard from JOB_COMPLETION_INDEX (Kubernetes Indexed Job; N from --shard-count) or SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT")
	shardCount := fs.Int("shard-count", 0, "number of shards N for --shard-from-env (required with JOB_COMPLETION_INDEX); with --merge, names the shard of each missing file")
	merge := fs.Bool("merge", false, "convert nothing: complete the models whose weight files are all converted; fail naming any still missing")
	resume := fs.Bool("resume", true, "skip models and weight files already converted from the same sources with the same settings (--resume=false is --force)")
	force := fs.Bool("force", false, "convert again and rebuild even what is up to date")
	dryRun := fs.Bool("dry-run", false, "list the models and weight files this process would convert; write nothing")
	asJSON := fs.Bool("json", false, "print a machine-readable report on stdout")
	verbose := fs.Bool("v", false, "list every weight file in the summary")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		return errUsage{errors.New("batch needs at least one SRC directory")}
	}
	if *out == "" {
		return errUsage{errors.New("batch needs -o OUTDIR")}
	}
	o := batch.Options{NoStats: *cf.noStats, Force: *force || !*resume, Merge: *merge, DryRun: *dryRun, Version: buildVersion()}
	switch {
	case *shard != "" && *fromEnv:
		return errUsage{errors.New("give --shard or --shard-from-env, not both")}
	case *shard != "":
		if o.Shard, o.Shards, err = parseShard(*shard); err != nil {
			return errUsage{err}
		}
	case *fromEnv:
		if o.Shard, o.Shards, err = shardFromEnv(os.Getenv, *shardCount); err != nil {
			return errUsage{err}
		}
	case *shardCount < 0:
		return errUsage{errors.New("--shard-count must be positive")}
	case *shardCount != 0 && o.Merge:
		o.Shards = *shardCount // only to name the shard of each missing file
	case *shardCount != 0:
		return errUsage{errors.New("--shard-count goes with --shard-from-env or --merge")}
	}
	if o.Merge && (*shard != "" || *fromEnv) {
		return errUsage{errors.New("--merge runs once, after every shard: it takes no --shard")}
	}
	cf.visit(fs)
	ro, err := cf.rate(fs)
	if err != nil {
		return err
	}
	if ro != nil {
		o.BPW, o.SampleRows = ro.BPW, ro.SampleRows
	}
	if o.Codec, o.CodecOptions, o.Selector, o.Options, err = cf.build(); err != nil {
		return err
	}
	if o.PassThrough, err = passThrough(o.Codec); err != nil {
		return err
	}
	debug.SetMemoryLimit(o.MaxMemory + 256<<20)
	ui := newBatchUI(stderr, *asJSON || *dryRun)
	o.OnEvent = ui.event
	rep, err := batch.Run(ctx, pos, *out, o)
	ui.finish()
	if rep == nil || ctx.Err() != nil {
		return err
	}
	if *asJSON {
		if jerr := printJSON(stdout, rep); jerr != nil {
			return jerr
		}
	} else {
		printBatch(stdout, rep, *verbose || *dryRun)
	}
	return err
}

// parseShard parses "I/N".
func parseShard(s string) (int, int, error) {
	a, b, ok := strings.Cut(s, "/")
	i, err1 := strconv.Atoi(strings.TrimSpace(a))
	n, err2 := strconv.Atoi(strings.TrimSpace(b))
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("--shard %q: want I/N, e.g. 0/4", s)
	}
	if err := batch.CheckShard(i, n); err != nil {
		return 0, 0, err
	}
	return i, n, nil
}

// shardFromEnv is batch.ShardFromEnv in the words of the flags.
func shardFromEnv(getenv func(string) string, count int) (int, int, error) {
	if count < 0 {
		return 0, 0, errors.New("--shard-count must be positive")
	}
	i, n, err := batch.ShardFromEnv(getenv, count)
	switch {
	case errors.Is(err, batch.ErrShardCount):
		return 0, 0, fmt.Errorf("%w: give it as --shard-count", err)
	case err != nil:
		return 0, 0, fmt.Errorf("--shard-from-env: %w", err)
	}
	return i, n, nil
}

// batchUI shows one progress bar across the batch on a terminal, and one
// line per finished weight file and model otherwise.
type batchUI struct {
	mu      sync.Mutex
	w       io.Writer
	bar     *progressbar.ProgressBar
	tty     bool
	quiet   bool
	models  int
	doneM   int
	units   int
	doneU   int
	current string
}

func newBatchUI(w io.Writer, quiet bool) *batchUI {
	u := &batchUI{w: w, quiet: quiet}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		u.tty = true
	}
	return u
}

func (u *batchUI) describe() {
	if u.bar != nil {
		u.bar.Describe(fmt.Sprintf("[%d/%d models, %d/%d files] %s", u.doneM, u.models, u.doneU, u.units, u.current))
	}
}

func (u *batchUI) event(e batch.Event) {
	u.mu.Lock()
	defer u.mu.Unlock()
	switch e.Kind {
	case batch.EventPlanned:
		u.models, u.units = e.Models, e.Units
		if u.tty && !u.quiet && e.Units > 0 {
			u.bar = newBar(u.w, e.Bytes, "")
			u.describe()
		}
	case batch.EventUnitStart:
		u.current = e.Unit.Model + "/" + e.Unit.Source
		u.describe()
	case batch.EventBytes:
		if u.bar != nil {
			u.bar.Add64(e.Bytes)
		}
	case batch.EventUnitDone:
		u.doneU++
		u.describe()
		if !u.tty && !u.quiet {
			r := e.Unit
			if r.Status == batch.UnitFailed {
				fmt.Fprintf(u.w, "tpconvert: [%d/%d] %s/%s: failed: %s\n", u.doneU, u.units, r.Model, r.Source, r.Error)
			} else {
				fmt.Fprintf(u.w, "tpconvert: [%d/%d] %s/%s: %s in %.1fs, %s -> %s (%.2f bits/weight)\n", u.doneU, u.units,
					r.Model, r.Source, r.Status, r.Seconds, human(r.SourceBytes), human(r.OutputBytes), r.BPW)
			}
		}
	case batch.EventModelDone:
		u.doneM++
		u.describe()
		if !u.tty && !u.quiet {
			m := e.Model
			line := fmt.Sprintf("tpconvert: model %d/%d %s: %s", u.doneM, u.models, m.Name, m.Status)
			if m.Reason != "" && m.Status != batch.ModelConverted {
				line += " (" + m.Reason + ")"
			}
			if m.Error != "" {
				line += ": " + m.Error
			}
			fmt.Fprintln(u.w, line)
		}
	}
}

func (u *batchUI) finish() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.bar != nil {
		u.bar.Finish()
		u.bar.Clear()
	}
}

// printBatch renders the final table.
func printBatch(w io.Writer, r *batch.Report, all bool) {
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "model\tstatus\tweight files\tsource\toutput\tbits/w\tratio\ttime\t")
	for _, m := range r.Models {
		ready := 0
		for _, u := range m.Units {
			switch u.Status {
			case batch.UnitConverted, batch.UnitReused, batch.UnitStaged, batch.UnitUpToDate:
				ready++
			}
		}
		bpw, ratio, out := "", "", ""
		if m.OutputBytes > 0 {
			out = human(m.OutputBytes)
			bpw = fmt.Sprintf("%.3f", m.BPW)
			ratio = fmt.Sprintf("%.2fx", float64(m.SourceBytes)/float64(m.OutputBytes))
		}
		secs := ""
		if m.Seconds > 0 {
			secs = fmt.Sprintf("%.1fs", m.Seconds)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%s\t%s\t%s\t%s\t%s\t\n", m.Name, m.Status, ready, len(m.Units), human(m.SourceBytes), out, bpw, ratio, secs)
		if all {
			for _, u := range m.Units {
				uo := ""
				if u.OutputBytes > 0 {
					uo = human(u.OutputBytes)
				}
				fmt.Fprintf(tw, "  %s\t%s\tshard %d\t%s\t%s\t\t\t\t\n", u.Source, u.Status, u.Shard, human(u.SourceBytes), uo)
			}
		}
	}
	tw.Flush()
	for _, m := range r.Models {
		switch {
		case m.Error != "":
			fmt.Fprintf(w, "%s: %s\n", m.Name, m.Error)
		case m.Status == batch.ModelWaiting || m.Status == batch.ModelIncomplete:
			fmt.Fprintf(w, "%s: %s\n", m.Name, m.Reason)
		}
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	t := r.Totals
	shard := ""
	switch {
	case r.Merge:
		shard = " (merge)"
	case r.Shards > 1:
		shard = fmt.Sprintf(" (shard %d/%d)", r.Shard, r.Shards)
	}
	fmt.Fprintf(w, "%d models%s: %d converted, %d up to date, %d waiting for other shards, %d failed\n",
		t.Models, shard, t.Converted, t.UpToDate, t.Waiting, t.Failed)
	fmt.Fprintf(w, "%d weight files converted, %s in, %s out, in %.1fs (%s/s), peak memory %s\n", t.UnitsConverted,
		human(t.BytesIn), human(t.BytesOut), t.WallSeconds, human(int64(float64(t.BytesIn)/max(t.WallSeconds, 1e-9))), human(t.PeakRSSBytes))
	if t.BytesOut > t.BytesIn {
		fmt.Fprintf(w, "warning: the output is larger than the input (%s > %s): choose a smaller size with --bpw\n", human(t.BytesOut), human(t.BytesIn))
	}
}

// isDir reports whether p is a directory.
func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// restoreDir restores a directory written by 'tpconvert batch' (one model,
// or every model of a batch output).
func restoreDir(ctx context.Context, in, out string, o convert.RestoreOptions, workers int, maxMem int64, asJSON bool, stdout, stderr io.Writer) error {
	if out == "" {
		out = filepath.Clean(in) + ".restored"
	}
	debug.SetMemoryLimit(maxMem + 256<<20)
	prog := newProgress(stderr, "restore", asJSON)
	o.Options = stream.Options{Workers: workers, MaxMemory: maxMem, Progress: prog.add}
	o.OnStart = prog.start
	rep, err := batch.RestoreDir(ctx, in, out, o)
	prog.finish()
	if err != nil {
		return err
	}
	if asJSON {
		return printJSON(stdout, rep)
	}
	for _, m := range rep.Models {
		fmt.Fprintf(stdout, "restored %s into %s: %d weight files, %d other files\n", m.Model, m.Output, len(m.Weights), m.Files)
		for _, idx := range m.Indexes {
			fmt.Fprintf(stdout, "  %s: total_size updated\n", idx)
		}
	}
	fmt.Fprintf(stdout, "%s written in %.1fs (%s/s), peak memory %s\n", human(rep.BytesOut), rep.WallSeconds,
		human(int64(float64(rep.BytesOut)/max(rep.WallSeconds, 1e-9))), human(rep.PeakRSSBytes))
	return nil
}
