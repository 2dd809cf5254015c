package main

import (
	"errors"
	"flag"
	"fmt"
	"runtime"
	"strings"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/convert"
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
	bpw                             *float64
	sampleRows                      *int
	targetSize                      sizeFlag
	lossless                        *bool
	set                             map[string]bool
	rated                           bool // --bpw or --target-size (rate)
}

func addConvFlags(fs *flag.FlagSet, workersDoc, memDoc string) *convFlags {
	f := &convFlags{maxMem: sizeFlag(defaultMaxMemory())}
	f.codec = fs.String("codec", codec.Default(), "codec for the selected tensors: "+strings.Join(codec.Names(), ", "))
	f.layers = fs.String("layers", "", "weight matrices to compress: all (attention and MLP projections), mlp, attn, weights (every 2-D weight: also embeddings and output head), none (default: weights with --bpw or --target-size; "+declaredLayers()+"all for the other codecs)")
	f.include = fs.String("include", "", "also compress tensors whose name matches this regular expression")
	f.exclude = fs.String("exclude", "", "never compress tensors whose name matches this regular expression")
	f.rank = fs.Int("rank", 0, "rank of the low-rank factors (codecs that take it: "+taking(codec.Options{Rank: 1})+"; default: the codec's); other codecs refuse it")
	f.group = fs.Int("group-size", 0, "weights per scale/offset group (codecs that take it: "+taking(codec.Options{GroupSize: 1})+"; default: the codec's); other codecs refuse it")
	f.seed = fs.Uint64("seed", 0, "seed for every random choice of the codec (with --bpw/--target-size too)")
	f.workers = fs.Int("workers", runtime.NumCPU(), workersDoc)
	fs.Var(&f.maxMem, "max-memory", memDoc)
	f.noStats = fs.Bool("no-stats", false, "leave the measured reconstruction error out of the records (each compressed tensor is still decoded once to check it)")
	f.sampleRows = fs.Int("sample-rows", 0, "rows per tensor that --bpw/--target-size code with every candidate grid to estimate its error (default: enough for 32768 weights, 16-128 rows)")
	f.lossless = fs.Bool("lossless", false, "store every tensor bit-exact with the lossless codec (same as --codec lossless); the other codecs store the tensors they leave alone with it too, unless --codec none")
	f.bpw = fs.Float64("bpw", 0, "make the whole output file this many bits per parameter (e.g. 3 or 4.5): rate control of the codec ("+strings.Join(planners(), ", ")+"; default "+codec.Default()+") over every weight matrix, embeddings and output head included")
	return f
}

// addTargetSize adds --target-size (compress only: one file, one size).
func (f *convFlags) addTargetSize(fs *flag.FlagSet) {
	fs.Var(&f.targetSize, "target-size", "make the whole output file at most this size, e.g. 1GiB or 700MB (rate control, like --bpw)")
}

// visit records which flags were given on the command line.
func (f *convFlags) visit(fs *flag.FlagSet) {
	f.set = map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { f.set[fl.Name] = true })
}

// rate returns the rate-control request, or nil. --bpw and --target-size
// need a codec that plans (codec.Planner: the default codec unless
// --codec names another) and, unless --layers is given, select every
// weight matrix (stream.LayersWeights).
func (f *convFlags) rate(fs *flag.FlagSet) (*convert.RateOptions, error) {
	bpw, size := *f.bpw, int64(f.targetSize)
	// A value given as 0 is refused, not taken as "the default".
	for _, c := range []struct {
		name string
		zero bool
	}{
		{"bpw", bpw <= 0}, {"target-size", size <= 0}, {"rank", *f.rank <= 0}, {"group-size", *f.group <= 0},
		{"workers", *f.workers <= 0}, {"max-memory", f.maxMem <= 0},
	} {
		if f.set[c.name] && c.zero {
			v := fs.Lookup(c.name).Value.String()
			return nil, errUsage{fmt.Errorf("--%s %s: want above 0", c.name, v)}
		}
	}
	switch {
	case bpw == 0 && size == 0:
		return nil, nil
	case bpw != 0 && size != 0:
		return nil, errUsage{errors.New("give --bpw or --target-size, not both")}
	case bpw != 0 && !(bpw > 0 && bpw <= 64):
		return nil, errUsage{fmt.Errorf("--bpw %v: want a number of bits per parameter above 0 (and at most 64)", bpw)}
	case size < 0:
		return nil, errUsage{errors.New("--target-size must be positive")}
	case *f.lossless:
		return nil, errUsage{errors.New("--lossless keeps every tensor exact; it cannot be combined with --bpw or --target-size")}
	}
	f.rated = true
	if !codec.Plans(*f.codec) {
		return nil, errUsage{fmt.Errorf("--bpw and --target-size need a codec with rate control (%s); --codec %s cannot be sized (drop --codec, or use one of those)", strings.Join(planners(), ", "), *f.codec)}
	}
	if !f.set["layers"] {
		*f.layers = string(stream.LayersWeights)
	}
	if *f.sampleRows < 0 {
		return nil, errUsage{errors.New("--sample-rows must not be negative")}
	}
	return &convert.RateOptions{BPW: bpw, TargetBytes: size, SampleRows: *f.sampleRows}, nil
}

// build validates the flags and returns the codec, its options, the tensor
// selector and the pipeline options.
func (f *convFlags) build() (codec.Codec, codec.Options, stream.Selector, stream.Options, error) {
	var sel stream.Selector
	var err error
	if *f.layers == "" && !f.set["layers"] {
		*f.layers = string(stream.LayersAll)
		if l := codec.DefaultLayers(*f.codec); l != "" {
			*f.layers = l
		}
	}
	co := codec.Options{Rank: *f.rank, GroupSize: *f.group, Seed: *f.seed}
	if f.rated {
		// Rate control's codec codes each of the --workers tensors in
		// flight with its share of the CPUs.
		co.Workers = max(1, runtime.GOMAXPROCS(0)/max(*f.workers, 1))
	}
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
	if *f.lossless {
		if f.set["codec"] && *f.codec != "lossless" {
			return fail(errUsage{fmt.Errorf("--lossless stores every tensor with the lossless codec; drop --codec %s", *f.codec)})
		}
		*f.codec = "lossless"
	}
	c, err := codec.New(*f.codec, co)
	if err != nil {
		return fail(errUsage{err})
	}
	return c, co, sel, stream.Options{Workers: *f.workers, MaxMemory: int64(f.maxMem)}, nil
}

// passThrough returns the codec for the tensors that c leaves alone: the
// lossless codec, or nil (stored unchanged) when c is none.
func passThrough(c codec.Codec) (codec.ByteCodec, error) {
	if c.ID() == codec.IDNone {
		return nil, nil
	}
	l, err := codec.New("lossless", codec.Options{})
	if err != nil {
		return nil, err
	}
	return l.(codec.ByteCodec), nil
}

// taking lists the codecs that accept o (codec.Accepts).
func taking(o codec.Options) string {
	var out []string
	for _, n := range codec.Names() {
		if codec.Accepts(n, o) {
			out = append(out, n)
		}
	}
	return strings.Join(out, ", ")
}

// planners lists the codecs with rate control (codec.Plans).
func planners() []string {
	var out []string
	for _, n := range codec.Names() {
		if codec.Plans(n) {
			out = append(out, n)
		}
	}
	return out
}

// declaredLayers describes the default layer selections codecs declare
// (codec.DefaultLayers): "weights for NAME, the default codec; ".
func declaredLayers() string {
	var s string
	for _, n := range codec.Names() {
		if l := codec.DefaultLayers(n); l != "" {
			s += l + " for " + n
			if n == codec.Default() {
				s += ", the default codec"
			}
			s += "; "
		}
	}
	return s
}
