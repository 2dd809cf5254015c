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

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/formats/gguf"
	"github.com/tpconvert/tpconvert/formats/safetensors"
	"github.com/tpconvert/tpconvert/formats/tpk"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/internal/procstat"
	"github.com/tpconvert/tpconvert/stream"
)

// ErrQuantized is matched (with errors.Is) by the error of RestoreFile for
// a GGUF tensor in a ggml block type restored to safetensors without
// RestoreOptions.Dequantize.
var ErrQuantized = errors.New("safetensors cannot hold without dequantizing")

// ErrCannotConvert is returned by RestoreFile for a container conversion
// it cannot make (safetensors to GGUF).
var ErrCannotConvert = errors.New("cannot restore")

// RestoreOptions configure RestoreFile.
type RestoreOptions struct {
	stream.RestoreOptions
	// To is the output container; empty means the source's.
	To formats.Kind
	// ShardSize, when positive, writes a sharded safetensors checkout with
	// shards of at most this many bytes.
	ShardSize int64
	// Overwrite allows replacing existing output files.
	Overwrite bool
	// OnStart, if set, is called with the number of bytes to process.
	OnStart func(total int64)
}

// RestoreReport summarises a restore.
type RestoreReport struct {
	Input        string   `json:"input"`
	Output       string   `json:"output"`
	Kind         string   `json:"kind"`
	Files        []string `json:"files"`
	Tensors      int      `json:"tensors"`
	Decoded      int      `json:"decoded"`
	BytesOut     int64    `json:"bytes_out"`
	WallSeconds  float64  `json:"wall_seconds"`
	PeakRSSBytes int64    `json:"peak_rss_bytes"`
}

// IsDirOutput reports whether restoring r writes a checkout directory
// rather than one file.
func IsDirOutput(meta *formats.Meta, o RestoreOptions) bool {
	return meta.Kind == formats.Safetensors && o.To != formats.GGUF &&
		(o.ShardSize > 0 || meta.IndexName != "" || len(meta.Files) > 1)
}

// RestoreFile rebuilds the checkpoint stored in the .tpk file in. For a
// single-file source, out is a file; for a sharded checkout it is a
// directory that receives the shards under their original names and the
// index file. Outputs are written atomically.
func RestoreFile(ctx context.Context, in, out string, o RestoreOptions) (*RestoreReport, error) {
	start := time.Now()
	if err := checkNotInput(out, in); err != nil {
		return nil, err
	}
	r, err := tpk.Open(in)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	meta := r.Meta()
	to := o.To
	if to == "" {
		to = meta.Kind
	}
	if to != meta.Kind && !(meta.Kind == formats.GGUF && to == formats.Safetensors) {
		return nil, fmt.Errorf("%w: a %s checkpoint as %s (GGUF needs model metadata a safetensors file does not carry; restore to .safetensors)", ErrCannotConvert, meta.Kind, to)
	}
	plan, err := stream.Plan(r, o.RestoreOptions)
	if err != nil {
		return nil, err
	}
	if to == formats.Safetensors && meta.Kind == formats.GGUF {
		for _, t := range plan {
			if t.DType.IsQuantized() {
				return nil, fmt.Errorf("tensor %q is %s, which %w", t.Name, t.DType, ErrQuantized)
			}
		}
	}
	var total int64
	decoded := 0
	for i, e := range r.Entries() {
		total += e.SourceSize
		if plan[i].DType != e.DType || e.CodecID != 0 {
			decoded++
		}
	}
	if o.OnStart != nil {
		o.OnStart(total)
	}
	rep := &RestoreReport{Input: in, Output: out, Kind: string(to), Tensors: len(plan), Decoded: decoded}

	switch {
	case to == formats.Safetensors && IsDirOutput(meta, o):
		// The directory's parent must exist; the directory itself, if
		// created here, is removed again on failure or interrupt (if
		// nothing else was put in it meanwhile).
		if parent := filepath.Dir(filepath.Clean(out)); !isDir(parent) {
			return nil, fmt.Errorf("%s: directory %s does not exist", out, parent)
		}
		undo, err := atomicfile.MkdirAll(out)
		if err != nil {
			return nil, err
		}
		fail := func(err error) (*RestoreReport, error) {
			undo()
			return nil, err
		}
		dw, err := safetensors.NewDirWriter(out, meta, plan, safetensors.DirOptions{ShardSize: o.ShardSize, Overwrite: o.Overwrite})
		if err != nil {
			return fail(fmt.Errorf("restoring %s: %w", in, err))
		}
		if err := stream.Restore(ctx, r, plan, dw, o.RestoreOptions); err != nil {
			dw.Abort()
			return fail(err)
		}
		if err := dw.Close(); err != nil {
			dw.Abort()
			return fail(err)
		}
		rep.Files = dirFiles(out)
	default:
		if err := checkOutputFile(out); err != nil {
			return nil, err
		}
		f, err := atomicfile.Create(out, o.Overwrite)
		if err != nil {
			return nil, err
		}
		defer f.Abort()
		var sink formats.Sink
		if to == formats.GGUF {
			sink, err = gguf.NewWriter(stream.CancelWriter(ctx, outputWriter(f)), meta.GGUF, r.Index().GGUFInfoOrder, plan)
		} else {
			var fm *formats.FileMeta
			if meta.Kind == formats.Safetensors {
				fm = &meta.Files[0]
			}
			sink, err = safetensors.NewWriter(stream.CancelWriter(ctx, outputWriter(f)), plan, fm)
		}
		if err != nil {
			return nil, fmt.Errorf("restoring %s: %w", in, err)
		}
		if err := stream.Restore(ctx, r, plan, sink, o.RestoreOptions); err != nil {
			return nil, err
		}
		if err := sink.Close(); err != nil {
			return nil, err
		}
		if err := f.Commit(); err != nil {
			return nil, err
		}
		rep.Files = []string{out}
	}
	for _, p := range rep.Files {
		if st, err := os.Stat(p); err == nil {
			rep.BytesOut += st.Size()
		}
	}
	rep.WallSeconds = time.Since(start).Seconds()
	rep.PeakRSSBytes = procstat.PeakRSS()
	return rep, nil
}

// Verify checks the structure and every record checksum of a .tpk file,
// reading it in bounded memory, and that every record's codec and codec
// version are known to this build. It returns the number of records checked
// and one error per damaged record (the index itself failing gives a single
// error). It stops, returning ctx's error, when ctx is cancelled.
func Verify(ctx context.Context, path string) (int, []error) {
	r, err := tpk.Open(path)
	if err != nil {
		return 0, []error{err}
	}
	defer r.Close()
	var errs []error
	for i := range r.Entries() {
		if err := r.VerifyContext(ctx, i); ctx.Err() != nil {
			return i, []error{ctx.Err()}
		} else if err != nil {
			errs = append(errs, err)
		} else if err := knownCodec(r, i); err != nil {
			errs = append(errs, err)
		}
	}
	if err := checkRestorable(r); err != nil {
		errs = append(errs, err)
	}
	return len(r.Entries()), errs
}

// checkRestorable lays out the output a default restore of r writes (its
// file header: names, metadata, padding) without writing it, so that
// verify refuses what restore would refuse before its first tensor.
func checkRestorable(r *tpk.Reader) error {
	meta := r.Meta()
	plan, err := stream.Plan(r, stream.RestoreOptions{})
	if err != nil {
		return fmt.Errorf("%s: %w", r.Name(), err)
	}
	switch {
	case meta.Kind == formats.GGUF:
		_, err = gguf.NewWriter(io.Discard, meta.GGUF, r.Index().GGUFInfoOrder, plan)
	case IsDirOutput(meta, RestoreOptions{}):
		err = safetensors.CheckDir(meta, plan)
	default:
		_, err = safetensors.NewWriter(io.Discard, plan, &meta.Files[0])
	}
	if err != nil {
		return fmt.Errorf("%s: restore would fail: %w", r.Name(), err)
	}
	return nil
}

// knownCodec reports a record whose codec ID or codec version this build
// cannot decode, as restore would.
func knownCodec(r *tpk.Reader, i int) error {
	e := &r.Entries()[i]
	c, err := codec.ByID(e.CodecID)
	if err == nil && (e.CodecVersion == 0 || e.CodecVersion > c.Version()) {
		err = fmt.Errorf("%w: %s version %d (supported 1-%d)", codec.ErrUnknown, c.Name(), e.CodecVersion, c.Version())
	}
	if err != nil {
		return &tpk.Error{File: r.Name(), Tensor: e.Name, Offset: e.RecordOffset, Err: err}
	}
	return nil
}

func dirFiles(dir string) []string {
	var out []string
	es, _ := os.ReadDir(dir)
	for _, e := range es {
		if !e.IsDir() && (strings.HasSuffix(e.Name(), ".safetensors") || strings.HasSuffix(e.Name(), ".json")) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}
