package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/stream"
)

// defaultCodec is the codec used when --codec is not given.
var defaultCodec = "tenpak_x_v1"

func cmdCompress(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("compress", "tpconvert [compress] INPUT [-o OUT.tpk] [flags]", stderr)
	out := fs.String("o", "", "output .tpk file (default: INPUT with its extension replaced by .tpk; a directory m/ gives m.tpk)")
	codecName := fs.String("codec", defaultCodec, "codec for the selected tensors: "+strings.Join(codec.Names(), ", "))
	layers := fs.String("layers", "all", "weight matrices to compress: all (attention and MLP projections), mlp, attn, none")
	include := fs.String("include", "", "also compress tensors whose name matches this regular expression")
	exclude := fs.String("exclude", "", "never compress tensors whose name matches this regular expression")
	rank := fs.Int("rank", 0, "rank of the low-rank factors (tenpak_x_v1; default 32)")
	group := fs.Int("group-size", 0, "weights per scale/offset group (int4 default 32; tenpak_x_v1 default one row)")
	seed := fs.Uint64("seed", 0, "seed for every random choice of the codec")
	workers := fs.Int("workers", runtime.NumCPU(), "tensors processed in parallel")
	maxMem := sizeFlag(defaultMaxMemory())
	fs.Var(&maxMem, "max-memory", "bound on working memory, e.g. 512MiB or 4GiB; the default is a quarter of RAM")
	asJSON := fs.Bool("json", false, "print a machine-readable summary on stdout")
	verbose := fs.Bool("v", false, "list every tensor in the summary, not only compressed ones")
	force := fs.Bool("force", false, "overwrite an existing output file")
	noStats := fs.Bool("no-stats", false, "skip measuring reconstruction error (saves one decode per tensor)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errUsage{fmt.Errorf("compress takes one INPUT, got %d", len(pos))}
	}
	in := pos[0]
	if *out == "" {
		*out = convert.DefaultCompressOutput(in)
	}
	sel := stream.Selector{}
	if sel.Layers, err = stream.ParseLayers(*layers); err != nil {
		return errUsage{err}
	}
	if sel.Include, err = compileRE("include", *include); err != nil {
		return err
	}
	if sel.Exclude, err = compileRE("exclude", *exclude); err != nil {
		return err
	}
	if *workers < 1 {
		return errUsage{errors.New("--workers must be at least 1")}
	}
	c, err := codec.New(*codecName, codec.Options{Rank: *rank, GroupSize: *group, Seed: *seed})
	if err != nil {
		return errUsage{err}
	}
	debug.SetMemoryLimit(int64(maxMem) + 256<<20)
	prog := newProgress(stderr, "compress", *asJSON)
	rep, err := convert.CompressFile(ctx, in, *out, convert.CompressOptions{
		Options:   stream.Options{Workers: *workers, MaxMemory: int64(maxMem), Progress: prog.add},
		Codec:     c,
		Selector:  sel,
		Overwrite: *force,
		NoStats:   *noStats,
		OnStart:   prog.start,
	})
	prog.finish()
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
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
