package main

import (
	"errors"
	"flag"
	"runtime"
	"strings"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/stream"
)

// convFlags are the flags compress and batch share: which codec, on which
// tensors, with how much parallelism and memory.
type convFlags struct {
	codec, layers, include, exclude *string
	rank, group, workers            *int
	seed                            *uint64
	noStats                         *bool
	maxMem                          sizeFlag
}

func addConvFlags(fs *flag.FlagSet, workersDoc, memDoc string) *convFlags {
	f := &convFlags{maxMem: sizeFlag(defaultMaxMemory())}
	f.codec = fs.String("codec", defaultCodec, "codec for the selected tensors: "+strings.Join(codec.Names(), ", "))
	f.layers = fs.String("layers", "all", "weight matrices to compress: all (attention and MLP projections), mlp, attn, none")
	f.include = fs.String("include", "", "also compress tensors whose name matches this regular expression")
	f.exclude = fs.String("exclude", "", "never compress tensors whose name matches this regular expression")
	f.rank = fs.Int("rank", 0, "rank of the low-rank factors (tenpak_x_v1; default 32)")
	f.group = fs.Int("group-size", 0, "weights per scale/offset group (int4 default 32; tenpak_x_v1 default one row)")
	f.seed = fs.Uint64("seed", 0, "seed for every random choice of the codec")
	f.workers = fs.Int("workers", runtime.NumCPU(), workersDoc)
	fs.Var(&f.maxMem, "max-memory", memDoc)
	f.noStats = fs.Bool("no-stats", false, "skip measuring reconstruction error (saves one decode per tensor)")
	return f
}

// build validates the flags and returns the codec, its options, the tensor
// selector and the pipeline options.
func (f *convFlags) build() (codec.Codec, codec.Options, stream.Selector, stream.Options, error) {
	var sel stream.Selector
	var err error
	co := codec.Options{Rank: *f.rank, GroupSize: *f.group, Seed: *f.seed}
	fail := func(err error) (codec.Codec, codec.Options, stream.Selector, stream.Options, error) {
		return nil, co, sel, stream.Options{}, err
	}
	if sel.Layers, err = stream.ParseLayers(*f.layers); err != nil {
		return fail(errUsage{err})
	}
	if sel.Include, err = compileRE("include", *f.include); err != nil {
		return fail(err)
	}
	if sel.Exclude, err = compileRE("exclude", *f.exclude); err != nil {
		return fail(err)
	}
	if *f.workers < 1 {
		return fail(errUsage{errors.New("--workers must be at least 1")})
	}
	c, err := codec.New(*f.codec, co)
	if err != nil {
		return fail(errUsage{err})
	}
	return c, co, sel, stream.Options{Workers: *f.workers, MaxMemory: int64(f.maxMem)}, nil
}
