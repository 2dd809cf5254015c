package stream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"os"
	"sync"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/tensor"
)

// Row chunks. A tensor whose working memory exceeds half the budget flows
// through the pipeline in chunks of rows (slices along its first
// dimension) when the operation allows it, each chunk reserving only its
// own working memory: copies of source bytes, the f16 and bf16 casts
// (codec.RowCodec) and, on restore, dequantization and dtype conversion of
// tensors stored unchanged and the decoding of codecs whose rows decode
// independently (codec.RowDecoder). Such a tensor is one preparation item (on
// compress the statistics and the fallback decision, from a first pass
// over the memory map; on restore the record header, the payload's
// checksum being computed by the writer as it goes) followed by its
// chunks; the writer begins the record (or output tensor) at the
// preparation and appends each chunk.
//
// A codec.RowEncoder's payload holds every row's parameters before
// any row's codes, so its chunks cannot be appended: its preparation
// allocates the payload, which the chunks code their rows into (in
// parallel, at disjoint places), and holds its reservation until the last
// chunk is written (orderedUntil). Each chunk also decodes its rows; the
// writer gathers the fallback checks and error sums from the chunks in
// order (faithful) and writes the record, or stores the tensor unchanged,
// at the last. The output is the same bytes as when the tensor is
// processed whole.
//
// A tensor stored with a lossless codec whose payload is a sequence of
// independently coded chunks (codec.ChunkEncoder, ChunkDecoder; the
// pass-through codec, or --lossless) flows in chunks of the codec's
// chunks, of any shape. Its record's size must be known when the record
// begins, so the preparation codes every chunk once to measure them
// (reading the source once more, window by window, and releasing it), and
// decides from that size whether the tensor is stored coded or unchanged;
// the chunks are coded again as they are written. On restore the
// preparation walks the payload's chunk headers; each part decodes its
// chunks.

// maxChunk caps a chunk's working memory.
const maxChunk = 64 << 20

// item is one unit of work of the pipeline: a whole tensor, a chunked
// tensor's preparation (prep), or rows [r0, r1) of it.
type item struct {
	t      int
	prep   bool
	chunk  bool
	r0, r1 int64
	last   bool
	cost   int64 // reserved from the budget
	need   int64 // the working memory while it runs, the held reservation included
	until  int   // the item after whose write the reservation is given back
}

// split describes a tensor processed in row chunks.
type split struct {
	rows     int64 // along the first dimension
	rowBytes int64 // source (record payload) bytes per row
	perRow   int64 // working memory per row of a chunk
	prepRow  int64 // working memory per row of the preparation's pass
	// payload, when not 0, is the size of a record payload that is not
	// a concatenation of rows (a codec.RowDecoder's; rowBytes is 0).
	payload int64
	// hold, when not 0, is the memory the preparation reserves until
	// the last chunk is written (a codec.RowEncoder's payload, which
	// the chunks fill), and align the multiple of rows a chunk starts at.
	hold, align int64
	// size, when not 0, is the source bytes of a tensor whose "rows"
	// are the chunks of a codec.ChunkEncoder's payload (or
	// ChunkDecoder's), rowBytes source bytes each, the last what
	// remains.
	size int64
}

// bytesOf returns the source (record payload) bytes [off, off+n) of rows
// [r0, r1).
func (s *split) bytesOf(r0, r1 int64) (off, n int64) {
	off, end := r0*s.rowBytes, r1*s.rowBytes
	if s.size > 0 {
		end = min(end, s.size)
	}
	return off, end - off
}

// payRange returns the payload bytes [a, b) of rows [r0, r1): exact for
// a concatenation of rows, otherwise a proportional share, so that the
// chunks in order hash, and release the pages of, the whole payload once.
func (s *split) payRange(r0, r1 int64) (a, b int64) {
	if s.payload == 0 {
		return r0 * s.rowBytes, r1 * s.rowBytes
	}
	share := func(r int64) int64 {
		hi, lo := bits.Mul64(uint64(s.payload), uint64(r))
		q, _ := bits.Div64(hi, lo, uint64(s.rows))
		return int64(q)
	}
	return share(r0), share(r1)
}

// rowBytes returns the bytes of one row of t in dtype dt, or 0 when t
// has no rows of whole blocks.
func rowBytes(t tensor.Info, dt tensor.DType) int64 {
	if len(t.Shape) == 0 || t.Shape[0] < 2 {
		return 0
	}
	b, err := tensor.ByteSize(dt, t.Shape[1:])
	if err != nil || b <= 0 {
		return 0
	}
	return b
}

// chunkRows returns the rows per chunk of s for a tensor whose whole
// working memory is whole bytes, or 0 to process it whole: a tensor is
// chunked when whole exceeds half of budget, in chunks of at most a
// quarter of it (and maxChunk).
// With a held reservation, the chunks take at most what it leaves.
func chunkRows(s *split, whole, budget int64) int64 {
	if s == nil || s.rows < 2 || budget <= 0 || whole <= budget/2 {
		return 0
	}
	per := max(s.perRow, s.prepRow, 1)
	room := min(budget/4, maxChunk)
	if s.hold > 0 {
		room = min(room, budget-s.hold)
	}
	n := max(room/per, 1)
	if a := max(s.align, 1); n%a != 0 {
		n = max(n/a, 1) * a
	}
	if n >= s.rows {
		return 0
	}
	return n
}

// planItems lists the items for n tensors: splits[i] (nil: whole) and
// whole(i), the working memory of tensor i processed whole.
func planItems(n int, splits []*split, whole func(i int) int64, budget int64, prepFixed int64) []item {
	items := make([]item, 0, n)
	for i := 0; i < n; i++ {
		w := whole(i)
		per := chunkRows(splits[i], w, budget)
		s := splits[i]
		if per > 0 && s.hold > 0 && s.hold+per*s.perRow > budget {
			// The payload and a chunk do not fit together: whole, alone
			// above the budget as any tensor larger than it; the least
			// budget that would chunk it is its need.
			items = append(items, item{t: i, cost: w, need: min(w, s.hold+max(s.align, 1)*s.perRow), until: len(items)})
			splits[i] = nil
			continue
		}
		if per == 0 {
			splits[i] = nil
			items = append(items, item{t: i, cost: w, need: w, until: len(items)})
			continue
		}
		prep := prepFixed + min(per, s.rows)*s.prepRow + s.hold
		k := len(items)
		items = append(items, item{t: i, prep: true, cost: prep, need: prep, until: k + int((s.rows+per-1)/per)})
		for r := int64(0); r < s.rows; r += per {
			r1 := min(r+per, s.rows)
			c := (r1 - r) * s.perRow
			items = append(items, item{t: i, chunk: true, r0: r, r1: r1, last: r1 == s.rows, cost: c, need: c + s.hold, until: len(items)})
		}
		if s.hold == 0 {
			items[k].until = k
		}
	}
	return items
}

func itemCost(items []item) func(int) int64 { return func(k int) int64 { return items[k].cost } }

func itemUntil(items []item) func(int) int { return func(k int) int { return items[k].until } }

// releaseRange drops bytes [off, off+n) of tensor i of src from resident
// memory, or nothing if src cannot.
func releaseRange(src formats.Source, i int, off, n int64) {
	if rr, ok := src.(formats.RangeReleaser); ok {
		rr.ReleaseRange(i, off, n)
	}
}

// compressSplits returns, per tensor, its split when Compress can process
// it in row chunks: stored unchanged without a pass-through codec, cast
// by a codec.RowCodec to a payload smaller than the source, or encoded by
// a codec.RowEncoder (that is also a codec.RowDecoder, for the check)
// into a payload held whole.
func compressSplits(o *CompressOptions, infos []tensor.Info, selected []bool) []*split {
	splits := make([]*split, len(infos))
	rc, isRow := o.Codec.(codec.RowCodec)
	re, isEnc := o.Codec.(codec.RowEncoder)
	if _, ok := o.Codec.(codec.RowDecoder); !ok {
		isEnc = false
	}
	ce, isChunk := o.PassThrough.(codec.ChunkEncoder)
	for i, t := range infos {
		if !selected[i] && isChunk {
			if cb := ce.ChunkBytes(t); cb > 0 && t.Size > 0 {
				splits[i] = chunkSplit(t.Size, cb)
			}
			continue
		}
		rb := rowBytes(t, t.DType)
		if rb == 0 || rb*t.Shape[0] != t.Size {
			continue
		}
		switch {
		case !selected[i] && o.PassThrough == nil:
			splits[i] = &split{rows: t.Shape[0], rowBytes: rb, perRow: rb}
		case selected[i] && isRow && tensor.CanDecode(t.DType) && !o.transposed(t):
			pr := rc.RowBytes(t)
			if pr <= 0 || (!o.AllowLarger && pr >= rb) {
				continue
			}
			cols := t.Elems() / t.Shape[0]
			splits[i] = &split{rows: t.Shape[0], rowBytes: rb, perRow: rb + 4*cols + pr, prepRow: rb + 8*cols + pr}
		case selected[i] && isEnc && len(t.Shape) >= 2 && tensor.CanDecode(t.DType) && !o.transposed(t):
			p, err := re.PayloadSize(t)
			if err != nil || p <= 0 {
				continue
			}
			// A chunk holds its source rows, their values, their decoded
			// values, a code byte per value and its share of the payload's
			// parameters; the payload is held from the preparation on.
			rows, cols := t.Shape[0], t.Elems()/t.Shape[0]
			splits[i] = &split{rows: rows, rowBytes: rb, perRow: rb + 9*cols + (p+rows-1)/rows, hold: p + encRows*4*cols, align: 8}
		}
	}
	return splits
}

// chunkSplit is the split of a payload of codec chunks (codec.ChunkEncoder
// or ChunkDecoder) of cb bytes of a tensor of size bytes: a chunk holds
// its source pages, its coded bytes and its coder's scratch (at most a
// chunk each, and a few plane headers); the measuring or indexing pass the
// pages of the window it reads and scratch.
func chunkSplit(size, cb int64) *split {
	return &split{rows: (size + cb - 1) / cb, rowBytes: cb, size: size, perRow: 3*cb + 64, prepRow: 2 * cb}
}

// encRows is the rows of values a codec.RowEncoder's tensor reserves
// besides its payload while it is encoded in chunks: the buffers of the
// codec's goroutines.
const encRows = 16

// castCheck is a chunked cast's preparation: one pass over the tensor in
// chunks of per rows that encodes, decodes and measures it as
// encodeTensor does for a whole tensor, in the same order, so the decision
// and the statistics are the same. It returns the record entry, or the
// whole fallback encoding (whole true) when the tensor is stored unchanged.
func castCheck(ctx context.Context, o CompressOptions, t tensor.Info, b []byte, s *split, per int64, release func(off, n int64)) (encoded, bool, error) {
	cols := t.Elems() / s.rows
	f := newFaithful()
	x := make([]float32, per*cols)
	y := make([]float32, per*cols)
	var buf bytes.Buffer
	for r := int64(0); r < s.rows; r += per {
		if err := ctx.Err(); err != nil {
			return encoded{}, false, err
		}
		r1 := min(r+per, s.rows)
		ct := t.Clone()
		ct.Shape[0] = r1 - r
		xc, yc := x[:(r1-r)*cols], y[:(r1-r)*cols]
		src := b[r*s.rowBytes : r1*s.rowBytes]
		if err := tensor.ToFloat32(xc, t.DType, src); err != nil {
			return encoded{}, false, err
		}
		release(r*s.rowBytes, (r1-r)*s.rowBytes)
		if !f.input(xc, r*cols) {
			break
		}
		buf.Reset()
		if err := o.Codec.Encode(&buf, ct, xc); err != nil {
			v, err := settle(inParts(ctx, release), o, t, b, nil, nil, false, err)
			return v, true, err
		}
		if err := o.Codec.Decode(yc, buf.Bytes(), ct, o.Codec.Version()); err != nil {
			return encoded{}, false, fmt.Errorf("tensor %q: decoding its own output: %w", t.Name, err)
		}
		if err := roundTo(yc, t.DType); err != nil {
			return encoded{}, false, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		f.output(xc, yc, r*cols)
	}
	st, err := f.verdict(o.Codec, t)
	if err != nil {
		v, err := settle(inParts(ctx, release), o, t, b, nil, nil, false, err)
		return v, true, err
	}
	e := rawEntry(t)
	e.Codec, e.CodecID, e.CodecVersion, e.Params = o.Codec.Name(), o.Codec.ID(), o.Codec.Version(), tensorParams(o.Codec, t)
	if !o.NoStats {
		e.Stats = &st
	}
	return encoded{entry: e}, false, nil
}

// castRows encodes rows [r0, r1) of t (source bytes b) with the RowCodec
// of o.
func castRows(o CompressOptions, t tensor.Info, b []byte, s *split, r0, r1 int64) ([]byte, error) {
	cols := t.Elems() / s.rows
	x := make([]float32, (r1-r0)*cols)
	if err := tensor.ToFloat32(x, t.DType, b[r0*s.rowBytes:r1*s.rowBytes]); err != nil {
		return nil, err
	}
	ct := t.Clone()
	ct.Shape[0] = r1 - r0
	var buf bytes.Buffer
	buf.Grow(int(o.Codec.(codec.RowCodec).RowBytes(t) * (r1 - r0)))
	if err := o.Codec.Encode(&buf, ct, x); err != nil {
		return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	return buf.Bytes(), nil
}

// measureAcc accumulates Measure's sums over consecutive parts of x and y.
type measureAcc struct{ sig, noise float64 }

func (a *measureAcc) add(x, y []float32) {
	for i := range x {
		d := float64(x[i]) - float64(y[i])
		a.sig += float64(x[i]) * float64(x[i])
		a.noise += d * d
	}
}

func (a *measureAcc) stats() formats.Stats {
	s := formats.Stats{}
	switch {
	case a.noise == 0:
		s.RelErr, s.SQNRdB = 0, math.Inf(1)
	case a.sig == 0:
		s.RelErr, s.SQNRdB = math.Inf(1), math.Inf(-1)
	default:
		s.RelErr = math.Sqrt(a.noise / a.sig)
		s.SQNRdB = 10 * math.Log10(a.sig/a.noise)
	}
	return s
}

// maxItemCost returns, per tensor, the largest reservation of its items.
func maxItemCost(n int, items []item) func(int) int64 {
	c := make([]int64, n)
	for _, it := range items {
		c[it.t] = max(c[it.t], it.need)
	}
	return func(i int) int64 { return c[i] }
}

// compressChunks runs Compress's items: whole tensors by work and write,
// chunked ones here.
type compressChunks struct {
	ctx      context.Context // Compress's, for the writer's inParts
	o        CompressOptions
	src      formats.Source
	w        formats.RecordSink
	infos    []tensor.Info
	selected []bool
	splits   []*split
	items    []item
	results  []Result
	prog     *tracker
	work     func(ctx context.Context, i int) (encoded, error)
	write    func(i int, v encoded) error
	fell     []bool // chunked tensors stored whole after all (writer only)
	// bytes[i] is chunked tensor i's source bytes, set by its
	// preparation before it closes ready[i]; so is enc[i] for a tensor
	// encoded by a codec.RowEncoder.
	bytes [][]byte
	enc   []*rowsEnc
	ready []chan struct{}
	// chunks[i] codes tensor i's payload in parts (codec.ChunkEncoder),
	// or is nil when it is stored unchanged; set with bytes[i]. spills[i]
	// is the file its coded chunks are kept in (o.SpillDir), closed when
	// its last chunk is written or Compress returns.
	chunks []codec.Chunks
	spills []*spillFile
}

// spillFile is an unlinked temporary file in CompressOptions.SpillDir
// (where unlinking an open file fails, it is removed when closed).
type spillFile struct {
	*os.File
	name string // to remove at close; "" once unlinked
	once sync.Once
}

// newSpill creates a spill file in dir, or returns nil (the chunks are
// then coded twice).
func newSpill(dir string) *spillFile {
	if dir == "" {
		return nil
	}
	f, err := os.CreateTemp(dir, ".tpconvert-spill-*")
	if err != nil {
		return nil
	}
	s := &spillFile{File: f, name: f.Name()}
	if os.Remove(f.Name()) == nil {
		s.name = ""
	}
	return s
}

func (s *spillFile) close() {
	if s == nil {
		return
	}
	s.once.Do(func() {
		s.File.Close()
		if s.name != "" {
			os.Remove(s.name)
		}
	})
}

// closeSpills closes every spill file still open.
func (c *compressChunks) closeSpills() {
	for _, s := range c.spills {
		s.close()
	}
}

// rowsEnc is a tensor being encoded in row chunks by a codec.RowEncoder:
// its payload, which the chunks fill, and the checks the writer gathers
// from them in order.
type rowsEnc struct {
	payload []byte
	check   *faithful
}

// rowsPart is a chunk of such a tensor as its work leaves it for the
// writer: its inputs x and decoded values y from element off, or in check
// why they were not encoded.
type rowsPart struct {
	off   int64
	x, y  []float32
	check *faithful
}

func (c *compressChunks) doWork(ctx context.Context, k int) (encoded, error) {
	it := c.items[k]
	if !it.prep && !it.chunk {
		return c.work(ctx, it.t)
	}
	i, t, s := it.t, c.infos[it.t], c.splits[it.t]
	var b []byte
	if it.prep {
		var err error
		if b, err = c.src.Bytes(i); err != nil {
			return encoded{}, err
		}
		c.bytes[i] = b
		if c.selected[i] && s.hold > 0 {
			re := c.o.Codec.(codec.RowEncoder)
			size, err := re.PayloadSize(t)
			if err != nil {
				return encoded{}, fmt.Errorf("tensor %q: %w", t.Name, err)
			}
			p := make([]byte, size)
			if err := re.BeginRows(p, t); err != nil {
				return encoded{}, fmt.Errorf("tensor %q: %w", t.Name, err)
			}
			c.enc[i] = &rowsEnc{payload: p, check: newFaithful()}
		}
		if s.size > 0 {
			return c.measure(ctx, k, b)
		}
		close(c.ready[i])
	} else {
		// Bytes once per tensor (it starts the readahead of all of it).
		if err := await(ctx, c.ready[i]); err != nil {
			return encoded{}, err
		}
		b = c.bytes[i]
	}
	switch {
	case s.size > 0 && c.chunks[i] != nil:
		_, n := s.bytesOf(it.r0, it.r1)
		p, err := c.chunks[i].AppendChunks(make([]byte, 0, n+64*(it.r1-it.r0+1)), int(it.r0), int(it.r1))
		if err != nil {
			return encoded{}, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		return encoded{payload: p}, nil
	case s.size > 0:
		off, n := s.bytesOf(it.r0, it.r1)
		return encoded{payload: b[off : off+n]}, nil
	case it.prep && !c.selected[i]:
		return encoded{entry: rawEntry(t)}, nil
	case s.hold > 0 && it.prep:
		return encoded{}, nil
	case s.hold > 0:
		p, err := c.encodeRows(ctx, i, b, it.r0, it.r1)
		return encoded{rows: p}, err
	case it.prep:
		per := c.items[k+1].r1 - c.items[k+1].r0
		v, whole, err := castCheck(ctx, c.o, t, b, s, per, func(off, n int64) { releaseRange(c.src, i, off, n) })
		v.whole = whole
		return v, err
	case !c.selected[i]:
		return encoded{payload: b[it.r0*s.rowBytes : it.r1*s.rowBytes]}, nil
	}
	p, err := castRows(c.o, t, b, s, it.r0, it.r1)
	return encoded{payload: p}, err
}

func (c *compressChunks) doWrite(k int, v encoded) error {
	it := c.items[k]
	if !it.prep && !it.chunk {
		return c.write(it.t, v)
	}
	i, t, s := it.t, c.infos[it.t], c.splits[it.t]
	if s.hold > 0 && c.selected[i] {
		return c.writeRows(it, v.rows)
	}
	if it.prep {
		if v.whole {
			c.fell[i] = true
			return c.write(i, v)
		}
		pr := s.rowBytes
		switch {
		case s.size > 0:
			return c.w.BeginRecord(v.entry, v.size)
		case c.selected[i]:
			pr = c.o.Codec.(codec.RowCodec).RowBytes(t)
		}
		return c.w.BeginRecord(v.entry, s.rows*pr)
	}
	if !c.fell[i] {
		if err := c.w.WritePayload(v.payload); err != nil {
			return err
		}
	}
	off, n := s.bytesOf(it.r0, it.r1)
	releaseRange(c.src, i, off, n)
	if !it.last {
		c.prog.upTo(i, t, off+n, t.Size)
		return nil
	}
	c.spills[i].close()
	if c.fell[i] {
		return nil
	}
	if err := c.w.EndRecord(); err != nil {
		return err
	}
	c.src.Release(i)
	c.results[i] = Result{Entry: c.w.Last()}
	c.prog.written(i, t, t.Size)
	return nil
}

// measure is the preparation (item k) of tensor i, stored with the
// PassThrough codec (a codec.ChunkEncoder) in parts: one pass over its
// source bytes b gives the payload's size, and so the record, or the
// tensor is stored unchanged if that is not smaller than b, as
// passThrough decides for a whole tensor.
func (c *compressChunks) measure(ctx context.Context, k int, b []byte) (encoded, error) {
	i, t := c.items[k].t, c.infos[c.items[k].t]
	pc := c.o.PassThrough
	per := c.items[k+1].r1 - c.items[k+1].r0
	var spill codec.Spill
	if sp := newSpill(c.o.SpillDir); sp != nil {
		c.spills[i], spill = sp, sp
	}
	ch, err := pc.(codec.ChunkEncoder).MeasureChunks(ctx, t, b, int(per), func(off, n int64) { releaseRange(c.src, i, off, n) }, spill)
	if err != nil {
		return encoded{}, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	e := rawEntry(t)
	size := int64(len(b))
	if ch.Size() < size {
		c.chunks[i], size = ch, ch.Size()
		e.Codec, e.CodecID, e.CodecVersion, e.Params = pc.Name(), pc.ID(), pc.Version(), pc.Params()
	} else {
		c.spills[i].close() // stored unchanged: the coded chunks are not needed
	}
	close(c.ready[i])
	return encoded{entry: e, size: size}, nil
}

// encodeRows encodes rows [r0, r1) of tensor i (source bytes b) into its
// payload, and decodes them for the writer's checks, as encodeTensor does.
func (c *compressChunks) encodeRows(ctx context.Context, i int, b []byte, r0, r1 int64) (*rowsPart, error) {
	t, s, e := c.infos[i], c.splits[i], c.enc[i]
	cols := t.Elems() / s.rows
	p := &rowsPart{off: r0 * cols, check: newFaithful()}
	x := make([]float32, (r1-r0)*cols)
	if err := tensor.ToFloat32(x, t.DType, b[r0*s.rowBytes:r1*s.rowBytes]); err != nil {
		return nil, err
	}
	if !p.check.input(x, p.off) {
		return p, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// Matrix rows per row of the first dimension.
	mr, _ := t.Matrix()
	k := mr / s.rows
	err := c.o.Codec.(codec.RowEncoder).EncodeRows(e.payload, t, x, r0*k, r1*k)
	if errors.Is(err, codec.ErrUnsupported) {
		p.check.refused = err
		return p, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	y := make([]float32, len(x))
	if err := c.o.Codec.(codec.RowDecoder).DecodeRows(y, e.payload, t, c.o.Codec.Version(), r0*k, r1*k); err != nil {
		return nil, fmt.Errorf("tensor %q: decoding its own output: %w", t.Name, err)
	}
	if err := roundTo(y, t.DType); err != nil {
		return nil, fmt.Errorf("tensor %q: %w", t.Name, err)
	}
	p.x, p.y = x, y
	return p, nil
}

// writeRows gathers the checks of chunk it of a tensor encoded by a
// codec.RowEncoder and, at its last chunk, writes the tensor's record, or
// what settle stores instead.
func (c *compressChunks) writeRows(it item, p *rowsPart) error {
	i, t, s := it.t, c.infos[it.t], c.splits[it.t]
	if it.prep {
		return nil
	}
	e := c.enc[i]
	e.check.merge(p.check)
	if p.check.badIn < 0 && p.check.refused == nil {
		e.check.output(p.x, p.y, p.off)
	}
	releaseRange(c.src, i, it.r0*s.rowBytes, (it.r1-it.r0)*s.rowBytes)
	if !it.last {
		c.prog.upTo(i, t, it.r1*s.rowBytes, t.Size)
		return nil
	}
	c.enc[i] = nil
	st, err := e.check.verdict(c.o.Codec, t)
	var sp *formats.Stats
	if !c.o.NoStats {
		sp = &st
	}
	v, err := settle(inParts(c.ctx, func(off, n int64) { releaseRange(c.src, i, off, n) }), c.o, t, c.bytes[i], e.payload, sp, false, err)
	if err != nil {
		return err
	}
	return c.write(i, v)
}

// restoreSplits returns, per record, its split when Restore can write it
// in row chunks to sink (a formats.PartSink): stored unchanged (copied,
// dequantized or converted to another float type) or by a
// codec.RowCodec, and not transposed.
func restoreSplits(es []formats.Record, plan []tensor.Info, codecs map[uint16]codec.Codec, sink formats.Sink) []*split {
	splits := make([]*split, len(es))
	if _, ok := sink.(formats.PartSink); !ok {
		return splits
	}
	for i := range es {
		e := &es[i]
		t := e.Info()
		if cd, ok := codecs[e.CodecID].(codec.ChunkDecoder); ok && !e.Transposed {
			// Chunks of floats hold whole elements: converted by --dtype
			// chunk by chunk.
			conv := plan[i].DType != e.DType
			if cb := cd.ChunkBytes(t); cb > 0 && t.Size > 0 && (!conv || e.DType.IsFloat() && plan[i].DType.IsFloat()) {
				splits[i] = chunkSplit(t.Size, cb)
				splits[i].payload = e.PayloadSize
				if conv {
					n := cb / e.DType.BlockBytes()
					splits[i].perRow += 4*n + n*plan[i].DType.BlockBytes()
				}
			}
			continue
		}
		if e.Transposed || len(t.Shape) == 0 {
			continue
		}
		rows := t.Shape[0]
		out := rowBytes(plan[i], plan[i].DType)
		if out == 0 || out*rows != plan[i].Size {
			continue
		}
		var pr, whole int64
		_, isRowDec := codecs[e.CodecID].(codec.RowDecoder)
		switch rc, ok := codecs[e.CodecID].(codec.RowCodec); {
		case e.CodecID == codec.IDNone && (plan[i].DType == e.DType || tensor.CanDecode(e.DType)):
			pr = rowBytes(t, e.DType)
		case ok:
			pr = rc.RowBytes(t)
		case isRowDec && len(t.Shape) >= 2 && e.PayloadSize > 0:
			whole = e.PayloadSize
		default:
			continue
		}
		if whole == 0 && (pr == 0 || pr*rows != e.PayloadSize) {
			continue
		}
		s := &split{rows: rows, rowBytes: pr, perRow: pr + (whole+rows-1)/rows, payload: whole}
		if e.CodecID != codec.IDNone || plan[i].DType != e.DType {
			s.perRow += out
			if whole == 0 || !floatDecoded(codecs[e.CodecID], e, plan[i]) {
				s.perRow += 4 * (t.Elems() / rows)
			}
		}
		splits[i] = s
	}
	return splits
}

// restoreChunks runs Restore's items: whole records by work and write,
// chunked ones here.
type restoreChunks struct {
	r      formats.RecordSource
	plan   []tensor.Info
	codecs map[uint16]codec.Codec
	sink   formats.Sink
	splits []*split
	items  []item
	prog   *tracker
	work   func(ctx context.Context, i int) ([]byte, error)
	write  func(i int, b []byte) error
	// pays[i] is chunked record i's payload, its checksum not yet
	// verified, and hashes[i] verifies it as the writer goes; both are
	// set by its preparation before it closes ready[i].
	pays   [][]byte
	hashes []formats.PayloadHash
	ready  []chan struct{}
	// index[i] finds the chunks of record i's payload when it is coded
	// in codec chunks (codec.ChunkDecoder); set with pays[i].
	index []codec.ChunkIndex
}

// payRange returns the payload bytes [a, b) of rows [r0, r1) of record i.
func (c *restoreChunks) payRange(i int, r0, r1 int64) (a, b int64) {
	if x := c.index[i]; x != nil {
		return x.Range(int(r0), int(r1))
	}
	return c.splits[i].payRange(r0, r1)
}

// outOff returns the offset in record i's output tensor of row r.
func (c *restoreChunks) outOff(i int, r int64) int64 {
	if s := c.splits[i]; s.size > 0 {
		// Chunks of whole elements, converted to the planned dtype.
		return r * s.rowBytes / c.r.Entries()[i].DType.BlockBytes() * c.plan[i].DType.BlockBytes()
	}
	return r * (c.plan[i].Size / c.splits[i].rows)
}

func (c *restoreChunks) doWork(ctx context.Context, k int) ([]byte, error) {
	it := c.items[k]
	if !it.prep && !it.chunk {
		return c.work(ctx, it.t)
	}
	i := it.t
	e, s := &c.r.Entries()[i], c.splits[i]
	if it.prep {
		p, h, err := c.r.PayloadParts(i)
		if err != nil {
			return nil, err
		}
		if n := c.plan[i].Elems(); e.CodecID != codec.IDNone && n > maxElemsPerPayloadByte*int64(len(p)) {
			return nil, c.r.Corrupt(i, e.PayloadOffset, fmt.Errorf("%d elements declared for a payload of %d bytes", n, len(p)))
		}
		if s.size > 0 {
			x, err := c.codecs[e.CodecID].(codec.ChunkDecoder).IndexChunks(p, e.Info(), e.CodecVersion, func(off, n int64) { c.r.ReleasePayload(i, off, n) })
			if err != nil {
				if verr := c.r.VerifyContext(ctx, i); verr != nil {
					return nil, verr
				}
				return nil, &formats.Error{File: c.r.Name(), Tensor: e.Name, Offset: e.PayloadOffset, Err: err}
			}
			c.index[i] = x
		}
		c.pays[i], c.hashes[i] = p, h
		close(c.ready[i])
		return nil, nil
	}
	if err := await(ctx, c.ready[i]); err != nil {
		return nil, err
	}
	b, err := c.decode(i, it, e, s)
	if err != nil {
		// A damaged payload is reported as such, as when the record
		// is checked before it is decoded whole.
		if verr := c.r.VerifyContext(ctx, i); verr != nil {
			return nil, verr
		}
	}
	return b, err
}

// decode returns the output bytes of chunk it of record i.
func (c *restoreChunks) decode(i int, it item, e *formats.Record, s *split) ([]byte, error) {
	a, b := c.payRange(i, it.r0, it.r1)
	p := c.pays[i][a:b]
	if e.CodecID == codec.IDNone && c.plan[i].DType == e.DType {
		return p, nil
	}
	if x := c.index[i]; x != nil {
		_, n := s.bytesOf(it.r0, it.r1)
		out := make([]byte, n)
		if err := x.DecodeChunks(out, int(it.r0), int(it.r1)); err != nil {
			return nil, &formats.Error{File: c.r.Name(), Tensor: e.Name, Offset: e.PayloadOffset + a, Err: err}
		}
		if c.plan[i].DType == e.DType {
			return out, nil
		}
		return convert(out, e.DType, c.plan[i].DType, e.Name)
	}
	t := e.Info().Clone()
	cols := t.Elems() / s.rows
	if fd, ok := c.codecs[e.CodecID].(codec.FloatDecoder); ok && s.payload != 0 && floatDecoded(fd.(codec.Codec), e, c.plan[i]) {
		mr, _ := t.Matrix()
		k := mr / s.rows
		out := make([]byte, (it.r1-it.r0)*(c.plan[i].Size/s.rows))
		if err := fd.DecodeRowsTo(out, c.plan[i].DType, c.pays[i], t, e.CodecVersion, it.r0*k, it.r1*k); err != nil {
			return nil, &formats.Error{File: c.r.Name(), Tensor: e.Name, Offset: e.PayloadOffset + a, Err: err}
		}
		return out, nil
	}
	x := make([]float32, (it.r1-it.r0)*cols)
	var err error
	if s.payload != 0 {
		// Matrix rows per row of the first dimension.
		mr, _ := t.Matrix()
		k := mr / s.rows
		err = c.codecs[e.CodecID].(codec.RowDecoder).DecodeRows(x, c.pays[i], t, e.CodecVersion, it.r0*k, it.r1*k)
	} else {
		t.Shape[0] = it.r1 - it.r0
		err = c.codecs[e.CodecID].Decode(x, p, t, e.CodecVersion)
	}
	if err != nil {
		return nil, &formats.Error{File: c.r.Name(), Tensor: e.Name, Offset: e.PayloadOffset + a, Err: err}
	}
	if e.CodecID != codec.IDNone {
		for k, v := range x {
			if !finite(v) {
				return nil, &formats.Error{File: c.r.Name(), Tensor: e.Name, Offset: e.PayloadOffset,
					Err: fmt.Errorf("%w: element %d decodes to %v (a non-finite codec parameter)", codec.ErrCorrupt, it.r0*cols+int64(k), v)}
			}
		}
	}
	out := make([]byte, (it.r1-it.r0)*(c.plan[i].Size/s.rows))
	if err := tensor.FromFloat32(out, c.plan[i].DType, x); err != nil {
		return nil, fmt.Errorf("tensor %q: %w", e.Name, err)
	}
	return out, nil
}

func (c *restoreChunks) doWrite(k int, b []byte) error {
	it := c.items[k]
	if !it.prep && !it.chunk {
		return c.write(it.t, b)
	}
	if it.prep {
		return nil
	}
	i, s := it.t, c.splits[it.t]
	e := &c.r.Entries()[i]
	// The output is a temporary file, removed when Restore fails: the
	// parts of a payload are written as they are hashed, and the last
	// fails the restore unless the checksum matches.
	pa, pb := c.payRange(i, it.r0, it.r1)
	c.hashes[i].Add(c.pays[i][pa:pb])
	if err := c.sink.(formats.PartSink).WriteTensorPart(c.plan[i], c.outOff(i, it.r0), b); err != nil {
		return err
	}
	c.r.ReleasePayload(i, pa, pb-pa)
	if !it.last {
		c.prog.upTo(i, c.plan[i], int64(float64(e.SourceSize)*float64(it.r1)/float64(s.rows)), e.SourceSize)
		return nil
	}
	if err := c.hashes[i].Check(); err != nil {
		return err
	}
	c.r.Release(i)
	c.prog.written(i, c.plan[i], e.SourceSize)
	return nil
}

// convert returns the float elements b of dtype from in dtype to.
func convert(b []byte, from, to tensor.DType, name string) ([]byte, error) {
	n := int64(len(b)) / from.BlockBytes()
	x := make([]float32, n)
	if err := tensor.ToFloat32(x, from, b); err != nil {
		return nil, fmt.Errorf("tensor %q: %w", name, err)
	}
	out := make([]byte, n*to.BlockBytes())
	if err := tensor.FromFloat32(out, to, x); err != nil {
		return nil, fmt.Errorf("tensor %q: %w", name, err)
	}
	return out, nil
}

// await waits for ready to be closed, or ctx to be done.
func await(ctx context.Context, ready chan struct{}) error {
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
