package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"runtime/debug"

	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/stream"
	"github.com/tpconvert/tpconvert/tensor"
)

func cmdCompress(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("compress", "tpconvert [compress] INPUT [-o OUT.tpk] [flags]", stdout)
	out := fs.String("o", "", "output .tpk file (default: INPUT with its extension replaced by .tpk; a directory m/ gives m.tpk)")
	cf := addConvFlags(fs, "tensors processed in parallel", "bound on working memory, e.g. 512MiB or 4GiB; the default is a quarter of RAM")
	cf.addTargetSize(fs)
	asJSON := fs.Bool("json", false, "print a machine-readable summary on stdout")
	verbose := fs.Bool("v", false, "list every tensor in the summary (codec, size, error)")
	force := fs.Bool("force", false, "overwrite an existing output file")
	weightsOnly := fs.Bool("weights-only", false, "compress a checkout directory that also holds other files (config.json, tokenizer, README) without them; 'tpconvert batch' keeps them")
	in, err := parseOne(fs, args, "INPUT")
	if err != nil {
		return err
	}
	if *out == "" {
		*out = defaultCompressOutput(in)
	}
	cf.visit(fs)
	ro, err := cf.rate(fs)
	if err != nil {
		return err
	}
	c, _, sel, so, err := cf.build()
	if err != nil {
		return err
	}
	pass, err := passThrough(c)
	if err != nil {
		return err
	}
	so.StrictMemory = cf.set["max-memory"]
	debug.SetMemoryLimit(so.MaxMemory + 256<<20)
	prog := newProgress(stderr, "compress", *asJSON)
	so.Progress = prog.add
	onStart := prog.start
	if ro != nil {
		plan := newProgress(stderr, "plan", *asJSON)
		ro.OnPlanStart = plan.start
		ro.OnPlan = func(t tensor.Info) { plan.add(t, t.Size) }
		defer plan.finish()
		onStart = func(total int64) { plan.finish(); prog.start(total) }
	}
	rep, err := convert.CompressFile(ctx, in, *out, convert.CompressOptions{
		Options:     so,
		Codec:       c,
		Selector:    sel,
		Overwrite:   *force,
		NoStats:     *cf.noStats,
		Rate:        ro,
		OnStart:     onStart,
		WeightsOnly: *weightsOnly,
		PassThrough: pass,
	})
	prog.finish()
	var me *stream.MemoryError
	if errors.As(err, &me) {
		return errUsage{fmt.Errorf("--max-memory %s: tensor %q needs %s of working memory; give --max-memory %dMiB or more, or --exclude it", human(me.Budget), me.Tensor, human(me.Need), (me.Need+1<<20-1)>>20)}
	}
	if errors.Is(err, convert.ErrSideFiles) {
		return fmt.Errorf("%w: 'tpconvert batch %s -o OUTDIR' keeps them beside the compressed weights; --weights-only compresses the weights alone", err, in)
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, rep)
	}
	printReport(stdout, rep, *verbose)
	return nil
}

func compileRE(name, s string) (*regexp.Regexp, error) {
	if s == "" {
		return nil, nil
	}
	re, err := regexp.Compile(s)
	if err != nil {
		return nil, errUsage{fmt.Errorf("--%s: %v", name, err)}
	}
	return re, nil
}
