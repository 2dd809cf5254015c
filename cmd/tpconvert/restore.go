package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/formats/tpk"
	"github.com/tpconvert/tpconvert/stream"
)

func cmdRestore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("restore", "tpconvert restore IN.tpk [-o OUT] [flags]", stdout)
	out := fs.String("o", "", "output file, or directory for a sharded checkout (default: IN.restored.safetensors, IN.restored.gguf or IN.restored/)")
	dtype := fs.String("dtype", "source", "dtype of every floating-point tensor, decoded or stored unchanged: source, f32, f16, bf16 (source: each tensor's own float type, F16 for decoded block-quantized ones; only source keeps unchanged tensors bit-exact)")
	deq := fs.String("dequantize", "", "also convert tensors stored in GGUF block-quantized types (Q4_K, ...) to f32, f16 or bf16")
	to := fs.String("to", "", "output container: safetensors or gguf (default: the one -o's extension names, .safetensors or .gguf, else the source's; GGUF sources may go to safetensors, safetensors sources only to safetensors)")
	shard := sizeFlag(0)
	fs.Var(&shard, "shard-size", "write a sharded safetensors checkout with shards of at most this size (e.g. 5GB)")
	workers := fs.Int("workers", runtime.NumCPU(), "tensors decoded in parallel")
	maxMem := sizeFlag(defaultMaxMemory())
	fs.Var(&maxMem, "max-memory", "bound on working memory; the default is a quarter of RAM")
	asJSON := fs.Bool("json", false, "print a machine-readable summary on stdout")
	force := fs.Bool("force", false, "overwrite existing output files")
	in, err := parseOne(fs, args, "IN.tpk")
	if err != nil {
		return err
	}
	o := convert.RestoreOptions{ShardSize: int64(shard), Overwrite: *force}
	if o.DType, err = parseDType(*dtype); err != nil {
		return errUsage{fmt.Errorf("--dtype: %w", err)}
	}
	if *deq != "" {
		if o.Dequantize, err = parseDType(*deq); err != nil || o.Dequantize == 0 {
			return errUsage{fmt.Errorf("--dequantize: want f32, f16 or bf16, not %q", *deq)}
		}
	}
	switch *to {
	case "":
	case "safetensors", "gguf":
		o.To = formats.Kind(*to)
	default:
		return errUsage{fmt.Errorf("--to: want safetensors or gguf, not %q", *to)}
	}
	if *workers < 1 {
		return errUsage{errors.New("--workers must be at least 1")}
	}
	// The output's extension chooses the container (--to implied).
	if k := formats.KindOfName(*out); k != "" {
		if o.To != "" && o.To != k {
			return errUsage{fmt.Errorf("--to %s, but -o %s names a %s file", o.To, *out, k)}
		}
		o.To = k
	}
	if isDir(in) {
		return restoreDir(ctx, in, *out, o, *workers, int64(maxMem), *asJSON, stdout, stderr)
	}
	if *out == "" {
		r, err := tpk.Open(in)
		if err != nil {
			return err
		}
		meta := r.Meta()
		*out = defaultRestoreOutput(in, meta, o.To, convert.IsDirOutput(meta, o))
		r.Close()
	}
	debug.SetMemoryLimit(int64(maxMem) + 256<<20)
	prog := newProgress(stderr, "restore", *asJSON)
	o.Options = stream.Options{Workers: *workers, MaxMemory: int64(maxMem), Progress: prog.add}
	o.OnStart = prog.start
	rep, err := convert.RestoreFile(ctx, in, *out, o)
	prog.finish()
	if errors.Is(err, convert.ErrCannotConvert) && formats.KindOfName(*out) != "" {
		return fmt.Errorf("-o %s: %w", *out, err)
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, rep)
	}
	fmt.Fprintf(stdout, "restored %d tensors (%d decoded) from %s into %s\n", rep.Tensors, rep.Decoded, rep.Input, rep.Output)
	for _, f := range rep.Files {
		fmt.Fprintf(stdout, "  %s\n", f)
	}
	fmt.Fprintf(stdout, "%s written in %.1fs (%s/s), peak memory %s\n", human(rep.BytesOut), rep.WallSeconds,
		human(int64(float64(rep.BytesOut)/max(rep.WallSeconds, 1e-9))), human(rep.PeakRSSBytes))
	return nil
}

func cmdInspect(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("inspect", "tpconvert inspect FILE [--json]", stdout)
	asJSON := fs.Bool("json", false, "print machine-readable output")
	in, err := parseOne(fs, args, "FILE")
	if err != nil {
		return err
	}
	rep, err := convert.Inspect(in)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, rep)
	}
	printReport(stdout, rep, true)
	return nil
}

func cmdVerify(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("verify", "tpconvert verify FILE.tpk [--json]", stdout)
	asJSON := fs.Bool("json", false, "print the result as JSON on stdout (exit status 1 still marks damage)")
	in, err := parseOne(fs, args, "FILE.tpk")
	if err != nil {
		return err
	}
	n, errs := convert.Verify(ctx, in)
	if *asJSON {
		res := struct {
			File    string   `json:"file"`
			OK      bool     `json:"ok"`
			Records int      `json:"records"`
			Errors  []string `json:"errors"`
		}{File: in, OK: len(errs) == 0, Records: n, Errors: []string{}}
		for _, e := range errs {
			res.Errors = append(res.Errors, e.Error())
		}
		if err := printJSON(stdout, res); err != nil {
			return err
		}
	}
	if len(errs) > 0 {
		for _, e := range errs[1:] {
			fmt.Fprintf(stderr, "tpconvert: %s\n", oneLine(e))
		}
		if len(errs) > 1 {
			return fmt.Errorf("%d of %d records damaged; first: %w", len(errs), n, errs[0])
		}
		return errs[0]
	}
	if !*asJSON {
		fmt.Fprintf(stdout, "%s: OK (%d records, all checksums match)\n", in, n)
	}
	return nil
}
