// Package stream is the conversion pipeline: open a source, plan, encode
// tensors in parallel under a memory budget, and hand the results in order
// to one writer.
//
//	Source ──► dispatcher (reserves Cost bytes) ──► workers (decode, encode)
//	       ──► reorder buffer ──► single writer (a RecordSink, or a Sink)
//
// The output is byte-identical for any number of workers.
package stream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"strconv"
	"strings"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/tensor"
)

// Options are the knobs shared by Compress and Restore.
type Options struct {
	// Workers is the number of tensors processed at once (default: CPUs).
	Workers int
	// MaxMemory bounds the working memory reserved by tensors in flight,
	// in bytes (default 1 GiB). A tensor needing more than half of it is
	// processed in row chunks where the operation allows it (see
	// chunk.go); one processed whole that needs more than all of it runs
	// alone.
	MaxMemory int64
	// StrictMemory refuses, with a *MemoryError before any work, a tensor
	// whose working memory exceeds MaxMemory, instead of running it alone
	// above the budget.
	StrictMemory bool
	// Progress, if set, is told how many more source bytes of tensor t
	// have been processed: during a tensor's work as the codec advances
	// (codec.ProgressEncoder) or as it is decoded, and when it is written
	// with what remains, so the calls for t add up to its size. Calls are
	// serialized (never two at once) but come from several goroutines.
	Progress func(t tensor.Info, bytes int64)
}

func (o *Options) defaults() {
	if o.Workers <= 0 {
		o.Workers = runtime.NumCPU()
	}
	if o.MaxMemory <= 0 {
		o.MaxMemory = 1 << 30
	}
}

// CompressOptions configure Compress.
type CompressOptions struct {
	Options
	// Codec compresses the selected tensors (default: none).
	Codec codec.Codec
	// Select decides which tensors Codec compresses; the others are stored
	// with the none codec, bit-exact. Nil selects nothing.
	Select func(t tensor.Info) bool
	// Transpose reports tensors stored [in, out] (GPT-2 Conv1D) that are
	// handed to the codec transposed. Nil transposes nothing.
	Transpose func(t tensor.Info) bool
	// NoStats leaves the measured reconstruction error out of the
	// records. Every compressed tensor is still decoded once and checked
	// against the codec's error bound (codec.MaxRelErr).
	NoStats bool
	// PassThrough, if set, stores the tensors that Codec does not
	// compress (or cannot) with this lossless codec instead of none,
	// whenever that is smaller. A Codec that is itself a lossless
	// ByteCodec other than none is used this way for every tensor.
	PassThrough codec.ByteCodec
	// AllowLarger stores the codec's payload even when it is not smaller
	// than the tensor's source bytes (for measuring a codec). By default
	// such a tensor is stored unchanged, with a Note ending in
	// NoteNotSmaller.
	AllowLarger bool
	// SpillDir, if set, is where a tensor coded in lossless chunks
	// (codec.ChunkEncoder) keeps its coded chunks between measuring them
	// and writing them, in an unlinked temporary file (at most about the
	// tensor's size on disk, while the tensor is written), so that each
	// chunk is coded once. The output's directory is a good choice: the
	// output needs that space anyway. Empty, or when the file cannot be
	// made or written, the chunks are coded twice; the bytes are the same.
	// A tensor encoded in windows of rows (codec.StreamEncoder) keeps its
	// coded row groups there too (about its payload's size for each step
	// size its codec tries), or codes them again from the input.
	SpillDir string
}

// Result describes what happened to one tensor.
type Result struct {
	Entry formats.Record
	// Note explains a fallback: the codec does not support the tensor, or
	// its payload would not be smaller than the source bytes; either way
	// the tensor is stored unchanged (codec none).
	Note string
}

// NoteNotSmaller is in the Note of a selected tensor stored unchanged (or
// with the lossless PassThrough codec) because the codec's payload would
// not have been smaller than its source bytes.
const NoteNotSmaller = "not smaller than the source"

// Compressed reports whether the tensor was stored by a lossy codec.
func (r *Result) Compressed() bool { return r.Entry.CodecID != codec.IDNone }

// Compress reads every tensor of src and writes one record per tensor, in
// file order, to sink, which the caller creates for src's metadata and
// closes. It returns one Result per tensor, in file order.
func Compress(ctx context.Context, src formats.Source, sink formats.RecordSink, o CompressOptions) ([]Result, error) {
	o.defaults()
	if o.Codec == nil {
		c, err := codec.New("none", codec.Options{})
		if err != nil {
			return nil, err
		}
		o.Codec = c
	}
	infos := src.Tensors()
	w := sink
	if g, ok := w.(grower); ok {
		g.Grow(len(infos))
	}
	bc, raw := o.Codec.(codec.ByteCodec)
	if raw && bc.ID() != codec.IDNone {
		o.PassThrough = bc
	}
	selected := make([]bool, len(infos))
	for i, t := range infos {
		selected[i] = !raw && o.Select != nil && o.Select(t)
	}
	results := make([]Result, len(infos))
	prog := newTracker(o.Progress, len(infos))
	splits, windows, cost := compressPlan(&o, infos, selected, o.MaxMemory)
	items := planItems(len(infos), splits, cost, o.MaxMemory, 0)
	var cw *compressChunks // the work of chunked and streamed tensors
	if o.StrictMemory {
		if err := checkMemory(infos, maxItemCost(len(infos), items), o.MaxMemory); err != nil {
			return nil, err
		}
	}
	work := func(ctx context.Context, i int) (encoded, error) {
		t := infos[i]
		b, err := src.Bytes(i)
		if err != nil {
			return encoded{}, err
		}
		if !selected[i] {
			return passThrough(o.PassThrough, t, b, rawEntry(t), "")
		}
		if windows[i] > 0 {
			return cw.streamTensor(ctx, i, b, windows[i], prog.within(i, t, t.Size))
		}
		p, st, transposed, err := encodeTensor(ctx, o, t, b, prog.within(i, t, t.Size))
		return settle(passThrough, o, t, b, p, st, transposed, err)
	}
	write := func(i int, v encoded) error {
		err := writeEncoded(w, v, func(off, n int64) { releaseRange(src, i, off, n) })
		v.spill.close()
		if err != nil {
			return err
		}
		src.Release(i)
		results[i] = Result{Entry: w.Last(), Note: v.note}
		prog.written(i, infos[i], infos[i].Size)
		return nil
	}
	cw = &compressChunks{ctx: ctx, o: o, src: src, w: w, infos: infos, selected: selected, splits: splits, items: items,
		results: results, prog: prog, work: work, write: write, fell: make([]bool, len(infos)),
		bytes: make([][]byte, len(infos)), enc: make([]*rowsEnc, len(infos)), ready: make([]chan struct{}, len(infos)),
		chunks: make([]codec.Chunks, len(infos))}
	for i, s := range splits {
		if s != nil {
			cw.ready[i] = make(chan struct{})
		}
	}
	cw.spills = make([]*spillFile, len(infos))
	defer cw.closeSpills()
	if err := orderedUntil(ctx, len(items), o.Workers, o.MaxMemory, itemCost(items), itemUntil(items), cw.doWork, cw.doWrite); err != nil {
		return nil, err
	}
	return results, nil
}

// grower is implemented by record sinks that can make room for n records
// at once (the .tpk writer).
type grower interface{ Grow(n int) }

type encoded struct {
	payload []byte
	entry   formats.Record
	note    string
	whole   bool  // a chunked tensor's fallback, stored whole
	size    int64 // the payload size of a tensor coded in codec chunks (its preparation, or coder's)
	// coder, when not nil, codes the payload, of n chunks of
	// chunkBytes source bytes, as the writer writes it (inParts).
	coder      codec.Chunks
	n          int
	chunkBytes int64
	rows       *rowsPart  // a chunk of a codec.RowEncoder's tensor
	spill      *spillFile // the coder's, closed once the record is written
}

// settle returns what Compress stores for the selected tensor t (source
// bytes b) given its payload p, statistics st and whether it was coded
// transposed, or the error err that refused it: a codec's refusal
// (codec.ErrUnsupported) or errUnfaithful, and a payload not smaller than
// b, store it unchanged (or with the PassThrough codec, through pass);
// other errors fail.
func settle(pass passFunc, o CompressOptions, t tensor.Info, b, p []byte, st *formats.Stats, transposed bool, err error) (encoded, error) {
	v, coded, err := settleSize(pass, o, t, b, int64(len(p)), st, transposed, err)
	if coded {
		v.payload = p
	}
	return v, err
}

// settleSize is settle for a payload of size bytes, which it does not
// hold: coded reports that the codec's payload is stored (the caller
// sets it), else v is what is stored instead.
func settleSize(pass passFunc, o CompressOptions, t tensor.Info, b []byte, size int64, st *formats.Stats, transposed bool, err error) (v encoded, coded bool, _ error) {
	e := rawEntry(t)
	switch {
	case errors.Is(err, codec.ErrUnsupported) || errors.Is(err, errUnfaithful):
		v, err := pass(o.PassThrough, t, b, e, fmt.Sprintf("%v; stored unchanged", err))
		return v, false, err
	case err != nil:
		return encoded{}, false, fmt.Errorf("tensor %q: %w", t.Name, err)
	case !o.AllowLarger && size >= int64(len(b)):
		// A compressor never makes a tensor larger than its source (as
		// zip stores what it cannot shrink).
		v, err := pass(o.PassThrough, t, b, e, fmt.Sprintf("%s: %d bytes for %d source bytes, %s; stored unchanged", o.Codec.Name(), size, len(b), NoteNotSmaller))
		return v, false, err
	}
	e.Codec, e.CodecID, e.CodecVersion, e.Params = o.Codec.Name(), o.Codec.ID(), o.Codec.Version(), tensorParams(o.Codec, t)
	e.Transposed, e.Stats = transposed, st
	return encoded{entry: e}, true, nil
}

// appender is implemented by byte codecs that append a payload to a
// slice (lossless.Codec), saving the copy through an io.Writer.
type appender interface {
	Append(dst []byte, t tensor.Info, src []byte) ([]byte, error)
}

// passFunc stores the source bytes b of t with the lossless codec pc
// when that is smaller than b, else unchanged (entry e, the none codec),
// and says so in note: passThrough, or inParts.
type passFunc func(pc codec.ByteCodec, t tensor.Info, b []byte, e formats.Record, note string) (encoded, error)

// passed returns what a passFunc stores when pc codes b in size bytes.
func passed(pc codec.ByteCodec, b []byte, e formats.Record, note string, size int64) (formats.Record, string, bool) {
	if size >= int64(len(b)) {
		return e, note, false
	}
	e.Codec, e.CodecID, e.CodecVersion, e.Params = pc.Name(), pc.ID(), pc.Version(), pc.Params()
	return e, strings.Replace(note, "stored unchanged", "stored with "+pc.Name(), 1), true
}

// inParts is the passFunc of tensors processed in chunks: a pc that is a
// codec.ChunkEncoder measures its payload chunk by chunk, reading b in
// windows of partsWindow bytes and calling release after each, and codes
// it again as the writer writes it (writeEncoded), so that no tensor is
// coded whole; others are passThrough.
func inParts(ctx context.Context, release func(off, n int64)) passFunc {
	return func(pc codec.ByteCodec, t tensor.Info, b []byte, e formats.Record, note string) (encoded, error) {
		ce, ok := pc.(codec.ChunkEncoder)
		var cb int64
		if ok {
			cb = ce.ChunkBytes(t)
		}
		if cb <= 0 || len(b) == 0 {
			return passThrough(pc, t, b, e, note)
		}
		ch, err := ce.MeasureChunks(ctx, t, b, int(max(partsWindow/cb, 1)), release, nil)
		if err != nil {
			return encoded{}, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		e, note, coded := passed(pc, b, e, note, ch.Size())
		if !coded {
			return encoded{payload: b, entry: e, note: note}, nil
		}
		return encoded{entry: e, note: note, size: ch.Size(), coder: ch, n: int((int64(len(b)) + cb - 1) / cb), chunkBytes: cb}, nil
	}
}

// partsWindow is the source bytes inParts reads before it releases them.
const partsWindow = 16 << 20

// writeEncoded writes the record of v to w, coding it chunk by chunk when
// v has a coder and calling release for the source bytes of each chunk.
func writeEncoded(w formats.RecordSink, v encoded, release func(off, n int64)) error {
	if v.coder == nil {
		return w.WriteRecord(v.entry, v.payload)
	}
	if err := w.BeginRecord(v.entry, v.size); err != nil {
		return err
	}
	var buf []byte
	for k := range v.n {
		var err error
		if buf, err = v.coder.AppendChunks(buf[:0], k, k+1); err != nil {
			return fmt.Errorf("tensor %q: %w", v.entry.Name, err)
		}
		if err := w.WritePayload(buf); err != nil {
			return err
		}
		if v.chunkBytes > 0 {
			release(int64(k)*v.chunkBytes, v.chunkBytes)
		}
	}
	return w.EndRecord()
}

// passThrough is the passFunc of tensors processed whole: pc codes b at
// once.
func passThrough(pc codec.ByteCodec, t tensor.Info, b []byte, e formats.Record, note string) (encoded, error) {
	if pc == nil || len(b) == 0 {
		return encoded{payload: b, entry: e, note: note}, nil
	}
	var p []byte
	if a, ok := pc.(appender); ok {
		var err error
		if p, err = a.Append(nil, t, b); err != nil {
			return encoded{}, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
	} else {
		var buf bytes.Buffer
		if err := pc.EncodeBytes(&buf, t, b); err != nil {
			return encoded{}, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		p = buf.Bytes()
	}
	e, note, coded := passed(pc, b, e, note, int64(len(p)))
	if !coded {
		p = b
	}
	return encoded{payload: p, entry: e, note: note}, nil
}

// cancelChunk is the most CancelWriter writes between checks of its
// context.
const cancelChunk = 8 << 20

type cancelWriter struct {
	ctx context.Context
	w   io.Writer
}

// CancelWriter returns a writer that writes to w in chunks of at most
// 8 MiB and fails with ctx's error once ctx is cancelled, so that writing
// a tensor of any size stops within one chunk of a cancellation.
func CancelWriter(ctx context.Context, w io.Writer) io.Writer { return cancelWriter{ctx, w} }

func (c cancelWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if err := c.ctx.Err(); err != nil {
			return n, err
		}
		k := min(len(p), cancelChunk)
		m, err := c.w.Write(p[:k])
		n += m
		if err != nil {
			return n, err
		}
		p = p[k:]
	}
	return n, nil
}

// compressCost is the working memory Compress reserves for t: its source
// bytes, and when c encodes it the float32 input (and its transpose, for
// a tensor stored [in, out]), the decoded copy for the statistics, the
// payload and the codec's own.
func compressCost(c codec.Codec, pass codec.ByteCodec, t tensor.Info, selected, transposed bool) int64 {
	cost := t.Size
	if selected {
		n := t.Elems()
		cost += 8*n + 2*n + c.Cost(t)
		if transposed {
			cost += 4 * n
		}
	} else if pass != nil {
		cost += pass.Cost(t)
	}
	return cost
}

// compressPlan returns how Compress processes each tensor under budget:
// its row-chunk split (compressSplits), or the rows of the windows it is
// encoded in by a codec.StreamEncoder (0: none), and the working memory
// of each tensor processed whole (or streamed).
func compressPlan(o *CompressOptions, infos []tensor.Info, selected []bool, budget int64) ([]*split, []int64, func(int) int64) {
	costs := make([]int64, len(infos))
	windows := make([]int64, len(infos))
	for i, t := range infos {
		costs[i] = compressCost(o.Codec, o.PassThrough, t, selected[i], o.transposed(t))
		if n, c := streamWindow(o, t, selected[i], costs[i], budget); n > 0 {
			windows[i], costs[i] = n, c
		}
	}
	splits := compressSplits(o, infos, selected)
	for i := range splits {
		if windows[i] > 0 {
			splits[i] = nil
		}
	}
	return splits, windows, func(i int) int64 { return costs[i] }
}

// MemoryError reports a tensor whose working memory exceeds the budget
// (Options.StrictMemory).
type MemoryError struct {
	Tensor       string
	Need, Budget int64
}

func (e *MemoryError) Error() string {
	return fmt.Sprintf("tensor %q needs %d bytes of working memory, more than the budget of %d", e.Tensor, e.Need, e.Budget)
}

func checkMemory(infos []tensor.Info, cost func(int) int64, budget int64) error {
	worst, need := -1, int64(0)
	for i := range infos {
		if c := cost(i); c > need {
			worst, need = i, c
		}
	}
	if budget > 0 && need > budget {
		return &MemoryError{Tensor: infos[worst].Name, Need: need, Budget: budget}
	}
	return nil
}

// transposed reports whether Compress hands t to the codec transposed.
func (o *CompressOptions) transposed(t tensor.Info) bool {
	return o.Transpose != nil && len(t.Shape) == 2 && o.Transpose(t)
}

// CheckMemory returns a *MemoryError if a tensor of src that Compress
// would encode with c (those sel selects, transposed where transpose
// says, as CompressOptions.Transpose; the others with pass, if not nil)
// needs more working memory than budget bytes. A transposed tensor is
// encoded whole: its need is that of the whole tensor.
func CheckMemory(src formats.Source, c codec.Codec, pass codec.ByteCodec, sel, transpose func(tensor.Info) bool, budget int64) error {
	infos := src.Tensors()
	_, raw := c.(codec.ByteCodec)
	if raw && c.ID() != codec.IDNone {
		pass = c.(codec.ByteCodec)
	}
	selected := make([]bool, len(infos))
	for i, t := range infos {
		selected[i] = !raw && sel != nil && sel(t)
	}
	o := CompressOptions{Codec: c, PassThrough: pass, Transpose: transpose}
	splits, _, cost := compressPlan(&o, infos, selected, budget)
	items := planItems(len(infos), splits, cost, budget, 0)
	return checkMemory(infos, maxItemCost(len(infos), items), budget)
}

// rawEntry is t's record entry when it is stored unchanged (the none
// codec); a lossy codec overwrites the codec fields.
func rawEntry(t tensor.Info) formats.Record {
	return formats.Record{Name: t.Name, DType: t.DType, Shape: t.Shape, SourceFile: t.File, SourceSize: t.Size,
		Codec: "none", CodecID: codec.IDNone, CodecVersion: 1}
}

// tensorParams returns the parameters recorded for t: the codec's
// per-tensor choice if it makes one (codec.TensorParamser), else its
// Params.
func tensorParams(c codec.Codec, t tensor.Info) string {
	if tp, ok := c.(codec.TensorParamser); ok {
		return tp.TensorParams(t)
	}
	return c.Params()
}

// Overhead returns an upper bound on the bytes of the file Compress would
// write for src to a record sink made by newSink, besides the payloads of
// the tensors selected for codec c: header, metadata, record headers,
// checksums, index and footer, plus the unselected tensors stored
// unchanged. Rate control subtracts it from a whole-file budget. It reads
// no tensor data.
func Overhead(src formats.Source, newSink NewRecordSink, c codec.Codec, sel func(tensor.Info) bool) (int64, error) {
	return OverheadWith(src, newSink, c, sel, nil)
}

// NewRecordSink creates a record sink writing to w for a source of
// metadata src (formats.Format.NewRecordSink).
type NewRecordSink = func(w io.Writer, src *formats.Meta) (formats.RecordSink, error)

// OverheadWith is Overhead for a Compress whose PassThrough is pass: each
// unselected tensor counts with the size it will really be stored at,
// which OverheadWith finds by encoding it (one tensor at a time) when pass
// is set.
func OverheadWith(src formats.Source, newSink NewRecordSink, c codec.Codec, sel func(tensor.Info) bool, pass codec.ByteCodec) (int64, error) {
	return OverheadWithin(src, newSink, c, sel, pass, 0)
}

// OverheadWithin is OverheadWith for a file of at most limit bytes (0: no
// limit): no offset or size in its index has more digits than limit.
func OverheadWithin(src formats.Source, newSink NewRecordSink, c codec.Codec, sel func(tensor.Info) bool, pass codec.ByteCodec, limit int64) (int64, error) {
	infos := src.Tensors()
	var cw countWriter
	w, err := newSink(&cw, src.Meta())
	if err != nil {
		return 0, err
	}
	var raw int64
	for i, t := range infos {
		e := rawEntry(t)
		if sel != nil && sel(t) {
			e.Codec, e.CodecID, e.CodecVersion, e.Params = c.Name(), c.ID(), c.Version(), tensorParams(c, t)
			// The longest statistics JSON can hold.
			e.Stats = &formats.Stats{RelErr: 0.012345678901234567, SQNRdB: -12.345678901234567}
		} else if pass != nil {
			b, err := src.Bytes(i)
			if err != nil {
				return 0, err
			}
			n, err := passThroughSize(pass, t, b, &e, func(off, n int64) { releaseRange(src, i, off, n) })
			src.Release(i)
			if err != nil {
				return 0, err
			}
			raw += n
		} else {
			raw += t.Size
		}
		if err := w.WriteRecord(e); err != nil {
			return 0, err
		}
	}
	if err := w.Close(); err != nil {
		return 0, err
	}
	// The dry run's offsets are small numbers; real ones have up to 20
	// digits (or as many as limit) in each of the 4 offset and size
	// fields of an index entry, and a parameter string may be longer
	// than the one shown here.
	digits := int64(20)
	if limit > 0 {
		digits = int64(len(strconv.FormatInt(limit, 10)))
	}
	return cw.n + raw + int64(len(infos))*(4*digits+32), nil
}

// passThroughSize returns the size of what passThrough stores for the
// source bytes b of t and sets *e to its entry, measuring it chunk by
// chunk (inParts) so that it holds no tensor whole.
func passThroughSize(pc codec.ByteCodec, t tensor.Info, b []byte, e *formats.Record, release func(off, n int64)) (int64, error) {
	v, err := inParts(context.Background(), release)(pc, t, b, *e, "")
	if v.coder != nil {
		v.payload = nil
	}
	*e = v.entry
	return v.size + int64(len(v.payload)), err
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// errUnfaithful marks a tensor the codec cannot represent faithfully:
// non-finite input, a non-finite decoded value, or an error beyond the
// codec's stated bound. The tensor is then stored unchanged (bit-exact).
var errUnfaithful = errors.New("not represented faithfully")

// encodeTensor decodes b to float32, encodes it, decodes the payload again
// and checks the reconstruction against the codec's error bound
// (codec.MaxRelErr); a tensor that fails is refused with errUnfaithful.
// done, if not nil, hears of the elements encoded so far.
func encodeTensor(ctx context.Context, o CompressOptions, t tensor.Info, b []byte, done func(elems int64)) ([]byte, *formats.Stats, bool, error) {
	n := t.Elems()
	x := make([]float32, n)
	err := tensor.ToFloat32(x, t.DType, b)
	if err != nil {
		return nil, nil, false, err
	}
	f := newFaithful()
	if !f.input(x, 0) {
		_, err := f.verdict(o.Codec, t)
		return nil, nil, false, err
	}
	ct := t.Clone()
	transposed := o.transposed(t)
	if transposed {
		x = transpose(x, int(t.Shape[0]), int(t.Shape[1]))
		ct.Shape = []int64{t.Shape[1], t.Shape[0]}
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, false, err
	}
	var buf bytes.Buffer
	if pe, ok := o.Codec.(codec.ProgressEncoder); ok && done != nil {
		err = pe.EncodeProgress(&buf, ct, x, done)
	} else {
		err = o.Codec.Encode(&buf, ct, x)
	}
	if err != nil {
		return nil, nil, false, err
	}
	p := buf.Bytes()
	if err := ctx.Err(); err != nil {
		return nil, nil, false, err
	}
	y := make([]float32, n)
	if err := o.Codec.Decode(y, p, ct, o.Codec.Version()); err != nil {
		return nil, nil, false, fmt.Errorf("decoding its own output: %w", err)
	}
	// Restore writes a float source's dtype: judge what it will write
	// (an F16 source's 65504 that decodes to 65536 would be +Inf).
	if err := roundTo(y, t.DType); err != nil {
		return nil, nil, false, err
	}
	f.output(x, y, 0)
	s, err := f.verdict(o.Codec, ct)
	if err != nil {
		return nil, nil, false, err
	}
	var st *formats.Stats
	if !o.NoStats {
		st = &s
	}
	return p, st, transposed, nil
}

// faithful gathers, over the parts of a tensor in order, what decides
// whether the codec represents it faithfully, in encodeTensor's order of
// precedence: a non-finite input, the codec's refusal, a non-finite
// decoded element, and the relative error against codec.MaxRelErr.
type faithful struct {
	acc        measureAcc
	badIn, bad int64 // the first non-finite input and decoded elements, or -1
	in, x, y   float32
	refused    error // the codec's first refusal (codec.ErrUnsupported)
}

func newFaithful() *faithful { return &faithful{badIn: -1, bad: -1} }

// finite reports whether v is neither NaN nor ±Inf: its exponent bits are
// not all ones.
func finite(v float32) bool { return math.Float32bits(v)&0x7f800000 != 0x7f800000 }

// input checks inputs x, the elements from off; false if one is not
// finite (or an earlier part's was).
func (f *faithful) input(x []float32, off int64) bool {
	if f.badIn >= 0 {
		return false
	}
	for k, v := range x {
		if !finite(v) {
			f.badIn, f.in = off+int64(k), v
			return false
		}
	}
	return true
}

// output checks the decoded values y of inputs x, the elements from off,
// and adds them to the error sums.
func (f *faithful) output(x, y []float32, off int64) {
	for k, v := range y {
		if f.bad < 0 && !finite(v) {
			f.bad, f.x, f.y = off+int64(k), x[k], v
			break
		}
	}
	f.acc.add(x, y)
}

// merge takes the input checks and refusal of a later part p.
func (f *faithful) merge(p *faithful) {
	if f.badIn < 0 {
		f.badIn, f.in = p.badIn, p.in
	}
	if f.refused == nil {
		f.refused = p.refused
	}
}

// verdict returns the statistics of the parts, or the error
// (errUnfaithful, or the codec's refusal) that stores the tensor
// unchanged.
func (f *faithful) verdict(c codec.Codec, t tensor.Info) (formats.Stats, error) {
	switch {
	case f.badIn >= 0:
		return formats.Stats{}, fmt.Errorf("%s: %w: element %d is %v", c.Name(), errUnfaithful, f.badIn, f.in)
	case f.refused != nil:
		return formats.Stats{}, f.refused
	case f.bad >= 0:
		return formats.Stats{}, fmt.Errorf("%s: %w: element %d (%g) decodes to %v", c.Name(), errUnfaithful, f.bad, f.x, f.y)
	}
	s := f.acc.stats()
	if bound := codec.MaxRelErr(c, t); !(s.RelErr <= bound) {
		return s, fmt.Errorf("%s: %w: relative error %.3g exceeds its bound %g", c.Name(), errUnfaithful, s.RelErr, bound)
	}
	return s, nil
}

// roundTo rounds every element of y to dtype dt in place when dt is a
// float type narrower than F32 (what restore writes for a float source);
// other dtypes leave y as it is.
func roundTo(y []float32, dt tensor.DType) error {
	if !dt.IsFloat() || dt == tensor.F32 {
		return nil
	}
	const chunk = 1 << 14
	size := int(dt.BlockBytes()) // float dtypes: one element per block
	buf := make([]byte, chunk*size)
	for i := 0; i < len(y); i += chunk {
		part := y[i:min(i+chunk, len(y))]
		b := buf[:len(part)*size]
		if err := tensor.FromFloat32(b, dt, part); err != nil {
			return err
		}
		if err := tensor.ToFloat32(part, dt, b); err != nil {
			return err
		}
	}
	return nil
}

// Measure returns the relative Frobenius error and SQNR of y against x.
func Measure(x, y []float32) formats.Stats {
	var a measureAcc
	a.add(x, y)
	return a.stats()
}

// transpose returns the transpose of the rows×cols matrix x.
func transpose(x []float32, rows, cols int) []float32 {
	y := make([]float32, len(x))
	const blk = 64
	for r0 := 0; r0 < rows; r0 += blk {
		for c0 := 0; c0 < cols; c0 += blk {
			for r := r0; r < min(r0+blk, rows); r++ {
				for c := c0; c < min(c0+blk, cols); c++ {
					y[c*rows+r] = x[r*cols+c]
				}
			}
		}
	}
	return y
}
