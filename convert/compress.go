package convert

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tpconvert/tpconvert/arch"
	"github.com/tpconvert/tpconvert/batch/checkout"
	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/internal/procstat"
	"github.com/tpconvert/tpconvert/stream"
	"github.com/tpconvert/tpconvert/tensor"
)

// CompressOptions configure CompressFile.
type CompressOptions struct {
	stream.Options
	// Codec compresses the selected tensors.
	Codec codec.Codec
	// Selector chooses the tensors to compress.
	Selector stream.Selector
	// PassThrough, if set, stores the tensors that Codec leaves alone
	// with this lossless codec when that is smaller (stream.CompressOptions).
	PassThrough codec.ByteCodec
	// Overwrite allows replacing an existing output file.
	Overwrite bool
	// NoStats skips measuring reconstruction error.
	NoStats bool
	// AllowLarger keeps codec payloads that are not smaller than their
	// source tensors (stream.CompressOptions.AllowLarger).
	AllowLarger bool
	// Rate, if set, has Codec (nil: the default codec, codec.Default),
	// which must plan (codec.Planner), choose a configuration per tensor
	// that makes the whole file the requested size; the planned codec
	// keeps Codec's options (seed, workers).
	Rate *RateOptions
	// OnStart, if set, is called once the source is open, with the total
	// number of source bytes to process.
	OnStart func(total int64)
	// WeightsOnly allows compressing a checkout directory that holds files
	// besides the weights the .tpk carries (config.json, tokenizer files,
	// README): they are left out. Without it CompressFile refuses such a
	// directory with ErrSideFiles; batch.Run keeps them.
	WeightsOnly bool
}

// ErrSideFiles is returned by CompressFile for a checkout directory that
// holds files a .tpk does not carry, unless WeightsOnly is set.
var ErrSideFiles = errors.New("holds files besides the weights")

// sideFiles lists the files of the checkout directory dir that src (opened
// from it) does not carry: everything but its weight files and its index,
// as batch would find them.
func sideFiles(dir string, src formats.Source) []string {
	cs, _, err := checkout.Find([]string{dir}, "")
	if err != nil || len(cs) != 1 {
		return nil
	}
	carried := map[string]bool{src.Meta().IndexName: true}
	for _, f := range src.Meta().Files {
		carried[f.Name] = true
	}
	var side []string
	for _, w := range cs[0].Weights {
		if !carried[w.Name] {
			side = append(side, w.Name)
		}
	}
	for _, f := range cs[0].Files {
		if !carried[f] {
			side = append(side, f)
		}
	}
	return side
}

// checkStorable refuses, before any work, a source that a .tpk file could
// not hold faithfully: metadata beyond the limits a .tpk reader enforces,
// a tensor name that is not valid UTF-8 (the index is JSON), or a GGUF
// file that restore could not rebuild byte for byte (non-zero padding,
// gaps between tensors).
func checkStorable(in string, src formats.Source) error {
	if err := src.Meta().Check(); err != nil {
		return fmt.Errorf("%s: %w", in, err)
	}
	ts := src.Tensors()
	if len(ts) > maxRecords {
		return fmt.Errorf("%s: %d tensors, more than a .tpk file holds (%d)", in, len(ts), maxRecords)
	}
	for _, t := range ts {
		if !utf8.ValidString(t.Name) {
			return fmt.Errorf("%s: tensor %q: name is not valid UTF-8 (a .tpk index is JSON, which cannot hold it)", in, t.Name)
		}
	}
	if g, ok := src.(reproducible); ok {
		if err := g.CheckReproducible(); err != nil {
			return fmt.Errorf("%w (restore could not rebuild this GGUF file byte for byte)", err)
		}
	}
	return nil
}

// reproducible is implemented by sources whose file restore rebuilds
// byte for byte only under conditions (gguf.Reader).
type reproducible interface{ CheckReproducible() error }

// outputWriter returns the writer an output file is written through;
// tests replace it to make writes fail as on a full disk.
var outputWriter = func(f *atomicfile.File) io.Writer { return f }

// conv1D reports the tensors stored [in, out] (GPT-2 Conv1D), which are
// encoded transposed.
func conv1D(t tensor.Info) bool { return arch.IsConv1D(t.Name) }

// CompressFile compresses the checkpoint at in into the .tpk file out. The
// output is written to a temporary file beside out and renamed only when
// complete; on any error, or when ctx is cancelled, nothing is left behind.
func CompressFile(ctx context.Context, in, out string, o CompressOptions) (*Report, error) {
	start := time.Now()
	if err := checkNotInput(out, in); err != nil {
		return nil, err
	}
	if err := checkOutputFile(out); err != nil {
		return nil, err
	}
	src, err := OpenSource(in)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	if err := checkStorable(in, src); err != nil {
		return nil, err
	}
	if st, err := os.Stat(in); err == nil && st.IsDir() && !o.WeightsOnly {
		if side := sideFiles(in, src); len(side) > 0 {
			list := strings.Join(side[:min(len(side), 4)], ", ")
			if len(side) > 4 {
				list += fmt.Sprintf(" and %d more", len(side)-4)
			}
			return nil, fmt.Errorf("%s %w that a .tpk does not carry (%s)", in, ErrSideFiles, list)
		}
	}
	var total int64
	for _, t := range src.Tensors() {
		total += t.Size
	}
	if o.StrictMemory && o.Codec != nil {
		// Before a rate plan too: its grids change the need only slightly.
		if err := stream.CheckMemory(src, o.Codec, o.PassThrough, o.Selector.Select, conv1D, o.MaxMemory); err != nil {
			return nil, err
		}
	}
	var rr *RateReport
	if o.Rate != nil {
		c, r, err := planRate(ctx, src, &o)
		if err != nil {
			return nil, err
		}
		o.Codec, rr = c, r
	}
	if o.OnStart != nil {
		o.OnStart(total)
	}
	f, err := atomicfile.Create(out, o.Overwrite)
	if err != nil {
		return nil, err
	}
	defer f.Abort()
	newSink := newRecordSink
	if rr != nil && rr.notes != nil {
		newSink = withNotes(o.Codec.ID(), rr.notes)
	}
	sink, err := newSink(stream.CancelWriter(ctx, outputWriter(f)), src.Meta())
	if err != nil {
		return nil, err
	}
	results, err := stream.Compress(ctx, src, sink, stream.CompressOptions{
		Options:     o.Options,
		Codec:       o.Codec,
		Select:      o.Selector.Select,
		Transpose:   conv1D,
		NoStats:     o.NoStats,
		AllowLarger: o.AllowLarger,
		PassThrough: o.PassThrough,
		// Lossless chunks are kept beside the output between measuring
		// and writing them (unlinked at once), so each is coded once.
		SpillDir: filepath.Dir(out),
	})
	if err != nil {
		return nil, err
	}
	if err := sink.Close(); err != nil {
		return nil, err
	}
	if err := f.Commit(); err != nil {
		return nil, err
	}
	st, err := os.Stat(out)
	if err != nil {
		return nil, err
	}
	var inBytes int64
	for _, fm := range src.Meta().Files {
		inBytes += fm.Size
	}
	rep := newReport(in, out, inBytes, st.Size(), len(results), func(i int) (*formats.Record, string) { return &results[i].Entry, results[i].Note })
	rep.Codec = o.Codec.Name()
	rep.Params = o.Codec.Params()
	rep.Allocation = Allocation(rep.Tensors)
	rep.Rate = rr
	rep.Totals.WallSeconds = time.Since(start).Seconds()
	rep.Totals.PeakRSSBytes = procstat.PeakRSS()
	return rep, nil
}
