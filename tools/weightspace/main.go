// Command weightspace measures codecs in weight space: for every tensor a
// conversion would compress (by --layers), it encodes the weights with each
// codec, decodes them, and reports bits per weight (payload bytes × 8 /
// weights, every byte of the payload counted) and the SQNR of the
// reconstruction, 10·log10(Σ‖W‖² / Σ‖W−W'‖²) over all those tensors.
//
//	go run ./tools/weightspace -label fixture fixtures/tiny-llama.safetensors
//
// Codecs are given as name[:group=N][:rank=N], separated by commas;
// NAME:bpw=B, for a codec with rate control (codec.Planner), plans it for
// B bits per weight over the measured tensors (the plan's time counts as encoding);
// tenpak_x_v3:k=K codes every measured tensor with the one step exponent K
// (no rate control). With -decode the table also gives decoding seconds.
// Beside each SQNR the table gives the Gaussian rate–distortion bound at
// the same bits per weight, 6.02·bits dB: no coder can do better on
// i.i.d. Gaussian weights of that rate.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/tpconvert/tpconvert/arch"
	"github.com/tpconvert/tpconvert/codec"
	_ "github.com/tpconvert/tpconvert/codec/basic"
	_ "github.com/tpconvert/tpconvert/codec/intq"
	_ "github.com/tpconvert/tpconvert/codec/tenpakx"
	_ "github.com/tpconvert/tpconvert/codec/tenpakx2"
	"github.com/tpconvert/tpconvert/codec/tenpakx3"
	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/rate"
	"github.com/tpconvert/tpconvert/stream"
	"github.com/tpconvert/tpconvert/tensor"
)

const defaultCodecs = "tenpak_x_v1,tenpak_x_v1:group=128,int8,int4:group=32,int4:group=128,tenpak_x_v2:bpw=2,tenpak_x_v2:bpw=3,tenpak_x_v2:bpw=4"

func main() {
	label := flag.String("label", "", "model label for the table (default: the path)")
	layers := flag.String("layers", "all", "tensors to measure: all, mlp, attn, weights, none")
	include := flag.String("include", "", "also measure tensors whose name matches this regular expression (with -layers none: only those)")
	codecs := flag.String("codecs", defaultCodecs, "codecs to measure")
	header := flag.Bool("header", false, "print the markdown table header first")
	decode := flag.Bool("decode", false, "add a column of decoding seconds (and give both to the millisecond)")
	estimate := flag.Bool("estimate", false, "print, for each codec with a size estimator, the sizes it estimates from rate control's sample rows against the actual sizes (on standard error)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: weightspace [flags] MODEL")
		os.Exit(2)
	}
	if err := run(flag.Arg(0), *label, *layers, *include, *codecs, *header, *decode, *estimate); err != nil {
		fmt.Fprintln(os.Stderr, "weightspace:", err)
		os.Exit(1)
	}
}

type spec struct {
	label string
	c     codec.Codec
	name  string  // with bpw
	bpw   float64 // a codec.Planner, planned at run time
}

func parseCodecs(s string) ([]spec, error) {
	var out []spec
	for _, item := range strings.Split(s, ",") {
		parts := strings.Split(item, ":")
		var o codec.Options
		if parts[0] == "tenpak_x_v3" && len(parts) == 2 && strings.HasPrefix(parts[1], "k=") {
			cfg, err := tenpakx3.ParseConfig(parts[1])
			if err != nil {
				return nil, err
			}
			c, err := tenpakx3.NewFixed(cfg)
			if err != nil {
				return nil, err
			}
			out = append(out, spec{label: item, c: c})
			continue
		}
		if codec.Plans(parts[0]) {
			k, v, _ := strings.Cut(strings.Join(parts[1:], ":"), "=")
			b, err := strconv.ParseFloat(v, 64)
			if k != "bpw" || err != nil || !(b > 0) {
				return nil, fmt.Errorf("codec %q: want %s:bpw=B", item, parts[0])
			}
			out = append(out, spec{label: item, name: parts[0], bpw: b})
			continue
		}
		for _, kv := range parts[1:] {
			k, v, _ := strings.Cut(kv, "=")
			n, err := strconv.Atoi(v)
			if err != nil {
				return nil, fmt.Errorf("codec option %q", kv)
			}
			switch k {
			case "group":
				o.GroupSize = n
			case "rank":
				o.Rank = n
			default:
				return nil, fmt.Errorf("codec option %q", kv)
			}
		}
		c, err := codec.New(parts[0], o)
		if err != nil {
			return nil, err
		}
		out = append(out, spec{label: item, c: c})
	}
	return out, nil
}

func run(path, label, layers, include, codecs string, header, decode, estimate bool) error {
	specs, err := parseCodecs(codecs)
	if err != nil {
		return err
	}
	l, err := stream.ParseLayers(layers)
	if err != nil {
		return err
	}
	sel := stream.Selector{Layers: l}
	if include != "" {
		if sel.Include, err = regexp.Compile(include); err != nil {
			return err
		}
	}
	src, err := convert.OpenSource(path)
	if err != nil {
		return err
	}
	defer src.Close()
	if label == "" {
		label = path
	}
	sig := 0.0
	noise := make([]float64, len(specs))
	bytesOut := make([]int64, len(specs))
	secs := make([]float64, len(specs))
	dsecs := make([]float64, len(specs))
	est := make([]int64, len(specs))
	var selWeights int64
	for _, t := range src.Tensors() {
		if sel.Select(t) {
			selWeights += t.Elems()
		}
	}
	for k, s := range specs {
		if s.bpw == 0 {
			continue
		}
		start := time.Now()
		pc, err := codec.New(s.name, codec.Options{})
		if err != nil {
			return err
		}
		planner := pc.(codec.Planner)
		plan, err := rate.Build(context.Background(), src, planner, sel.Select, rate.Options{Workers: runtime.GOMAXPROCS(0)})
		if err != nil {
			return err
		}
		if err := plan.Allocate(int64(s.bpw * float64(selWeights) / 8)); err != nil {
			return fmt.Errorf("%s: %w", s.label, err)
		}
		if specs[k].c, err = planner.Planned(codec.Plan{Configs: plan.Configs(), Importance: plan.Importance}); err != nil {
			return err
		}
		secs[k] += time.Since(start).Seconds()
	}
	var weights int64
	var ntens int
	dtypes := map[string]int{}
	for i, t := range src.Tensors() {
		if !sel.Select(t) {
			continue
		}
		b, err := src.Bytes(i)
		if err != nil {
			return err
		}
		x := make([]float32, t.Elems())
		if err := tensor.ToFloat32(x, t.DType, b); err != nil {
			return fmt.Errorf("%s: %w", t.Name, err)
		}
		if arch.IsConv1D(t.Name) {
			return fmt.Errorf("%s: Conv1D weights are not supported by this tool", t.Name)
		}
		src.Release(i)
		ntens++
		weights += int64(len(x))
		dtypes[t.DType.String()]++
		for _, v := range x {
			sig += float64(v) * float64(v)
		}
		y := make([]float32, len(x))
		for k, s := range specs {
			var buf bytes.Buffer
			start := time.Now()
			if err := s.c.Encode(&buf, t, x); err != nil {
				return fmt.Errorf("%s: %s: %w", s.label, t.Name, err)
			}
			secs[k] += time.Since(start).Seconds()
			start = time.Now()
			if err := s.c.Decode(y, buf.Bytes(), t, s.c.Version()); err != nil {
				return fmt.Errorf("%s: %s: %w", s.label, t.Name, err)
			}
			dsecs[k] += time.Since(start).Seconds()
			bytesOut[k] += int64(buf.Len())
			if e, ok := s.c.(codec.SizeEstimator); ok && estimate {
				n, err := estimateSize(e, s.c, t, x)
				if err != nil {
					return fmt.Errorf("%s: %s: %w", s.label, t.Name, err)
				}
				est[k] += n
			}
			for j := range x {
				d := float64(x[j]) - float64(y[j])
				noise[k] += d * d
			}
		}
	}
	if ntens == 0 {
		return fmt.Errorf("%s: no tensor selected by --layers %s", path, layers)
	}
	var dt []string
	for k, v := range dtypes {
		dt = append(dt, fmt.Sprintf("%d×%s", v, k))
	}
	if header {
		h, l := "", ""
		if decode {
			h, l = " decode s |", "---:|"
		}
		fmt.Println("| model | tensors (source dtype) | weights | codec | bits/weight | SQNR dB | Gaussian bound dB | encode s |" + h)
		fmt.Println("|---|---|---:|---|---:|---:|---:|---:|" + l)
	}
	for k, s := range specs {
		if est[k] > 0 {
			fmt.Fprintf(os.Stderr, "%s: estimated %d bytes, actual %d (%+.2f%%)\n", s.label, est[k], bytesOut[k], 100*(float64(est[k])/float64(bytesOut[k])-1))
		}
	}
	for k, s := range specs {
		bpw := float64(bytesOut[k]) * 8 / float64(weights)
		enc, d := fmt.Sprintf("%.1f", secs[k]), ""
		if decode {
			enc, d = fmt.Sprintf("%.3f", secs[k]), fmt.Sprintf(" %.3f |", dsecs[k])
		}
		fmt.Printf("| %s | %d (%s) | %d | %s | %.3f | %.2f | %.2f | %s |%s\n", label, ntens, strings.Join(dt, ", "), weights, s.label,
			bpw, 10*math.Log10(sig/noise[k]), 20*math.Log10(2)*bpw, enc, d)
	}
	return nil
}

// estimateSize returns e's size estimate of t (values x) under the Config
// c codes it with, from the sample rows rate control takes: up to 128
// rows, about 32768 values, spread evenly.
func estimateSize(e codec.SizeEstimator, c codec.Codec, t tensor.Info, x []float32) (int64, error) {
	tp, ok := c.(codec.TensorParamser)
	if !ok {
		return 0, fmt.Errorf("%s records no configuration per tensor", c.Name())
	}
	cfg, err := tenpakx3.ParseConfig(strings.Fields(tp.TensorParams(t))[0])
	if err != nil {
		return 0, err
	}
	r64, c64 := t.Matrix()
	rows, cols := int(r64), int(c64)
	n := min(rows, min(128, max(16, (32768+cols-1)/cols)))
	smp := make([]float32, 0, n*cols)
	for i := range n {
		r := int(int64(2*i+1) * int64(rows) / int64(2*n))
		smp = append(smp, x[r*cols:(r+1)*cols]...)
	}
	s, err := e.EstimateSizes(smp, rows, cols, nil, []codec.Config{cfg})
	if err != nil {
		return 0, err
	}
	return s[0], nil
}
