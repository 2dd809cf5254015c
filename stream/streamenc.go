package stream

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/tensor"
)

// Streamed encoding. A selected tensor whose working memory exceeds half
// the budget and whose codec is a codec.StreamEncoder (tenpak_x_v3) is
// encoded from windows of its matrix rows, read from the memory map as
// the codec asks (each read releases its pages): the codec's passes, then
// one pass here that decodes each window and checks it against the source
// in the order encodeTensor checks a whole tensor (faithful), so that the
// decision and the statistics are the same, and then the writer writes
// the record chunk by chunk from the codec's spill (encoded.coder). The
// tensor is one item, reserving the memory of a window (the codec's
// StreamCost or this pass's values and decoded values, whichever is
// larger) and of its source pages, not the tensor's.

// streamWindow returns the matrix rows of a window and the working memory
// when Compress encodes the selected tensor t, whose whole working memory
// is whole, in windows of rows (codec.StreamEncoder), or 0, 0 to encode
// it whole: a window is at most a quarter of the budget (and maxChunk).
func streamWindow(o *CompressOptions, t tensor.Info, selected bool, whole, budget int64) (rows, cost int64) {
	se, ok := o.Codec.(codec.StreamEncoder)
	if !ok || !selected || budget <= 0 || whole <= budget/2 || o.transposed(t) || !tensor.CanDecode(t.DType) {
		return 0, 0
	}
	mr, cols := t.Matrix()
	rb := rowBytes1(t.DType, cols)
	if rb <= 0 || rb*mr != t.Size || mr < 2 {
		return 0, 0
	}
	align := max(se.StreamAlign(t), 1)
	need := func(rows int64) int64 {
		return max(se.StreamCost(t, rows), 8*rows*cols+se.StreamCost(t, 0)) + rows*rb + streamFixed(cols, align)
	}
	// A window's rows take at most 8 bytes per value (this pass's values
	// and decoded values; the codec's values are 4) and their source
	// pages, within a quarter of the budget.
	n := max(min(budget/4, maxChunk)/(8*cols+rb)/align, 1) * align
	if n >= mr {
		return 0, 0
	}
	return n, need(n)
}

// streamFixed is the memory of the writer's chunk (a row group's bytes,
// at most 8 per weight) and of coding one again from the source.
func streamFixed(cols, align int64) int64 { return 13*align*cols + 1<<16 }

// rowBytes1 returns the bytes of one row of cols elements of dtype dt, or
// 0 when that is not whole blocks.
func rowBytes1(dt tensor.DType, cols int64) int64 {
	b, err := tensor.ByteSize(dt, []int64{cols})
	if err != nil || b <= 0 {
		return 0
	}
	return b
}

// errBadInput stops a codec's pass at a non-finite input value.
var errBadInput = errors.New("a non-finite input value")

// rowSource is a tensor's matrix rows decoded from its source bytes b:
// each read releases its pages, and the first read of each row checks
// its values (faithful.input; rows are first read in order).
type rowSource struct {
	b        []byte
	dt       tensor.DType
	rowBytes int64
	cols     int64
	release  func(off, n int64)
	mu       sync.Mutex
	checked  int64 // rows [0, checked) have been checked
	f        *faithful
}

func (s *rowSource) Rows(dst []float32, r0, r1 int64) error {
	if r0 < 0 || r1 < r0 || r1*s.rowBytes > int64(len(s.b)) || int64(len(dst)) != (r1-r0)*s.cols {
		return fmt.Errorf("rows [%d, %d) into %d values", r0, r1, len(dst))
	}
	off, n := r0*s.rowBytes, (r1-r0)*s.rowBytes
	if err := tensor.ToFloat32(dst, s.dt, s.b[off:off+n]); err != nil {
		return err
	}
	s.release(off, n)
	s.mu.Lock()
	defer s.mu.Unlock()
	if r0 <= s.checked && s.checked < r1 {
		if !s.f.input(dst[(s.checked-r0)*s.cols:], s.checked*s.cols) {
			return errBadInput
		}
		s.checked = r1
	}
	return nil
}

// checkRest checks the rows not read yet, in windows of rows rows.
func (s *rowSource) checkRest(rows, total int64) error {
	x := make([]float32, rows*s.cols)
	for r := s.checked; r < total; r = s.checked {
		r1 := min(total, r+rows)
		if err := s.Rows(x[:(r1-r)*s.cols], r, r1); err != nil {
			return err
		}
	}
	return nil
}

// streamTensor encodes the selected tensor i, t, of source bytes b in
// windows of rows rows, and returns its record for the writer (coded
// chunk by chunk), or what settle stores instead.
func (c *compressChunks) streamTensor(ctx context.Context, i int, b []byte, rows int64, done func(elems int64)) (encoded, error) {
	o, t := c.o, c.infos[i]
	release := func(off, n int64) { releaseRange(c.src, i, off, n) }
	mr, cols := t.Matrix()
	src := &rowSource{b: b, dt: t.DType, rowBytes: rowBytes1(t.DType, cols), cols: cols, release: release, f: newFaithful()}
	sp := newSpill(o.SpillDir)
	var spill codec.Spill
	if sp != nil {
		c.spills[i], spill = sp, sp
	}
	fallback := func(err error) (encoded, error) {
		sp.close()
		return settle(inParts(ctx, release), o, t, b, nil, nil, false, err)
	}
	ch, err := o.Codec.(codec.StreamEncoder).EncodeStream(ctx, t, src, rows, spill, done)
	refused := errors.Is(err, codec.ErrUnsupported)
	if refused {
		src.f.refused, err = err, nil
	}
	if err == nil {
		// A non-finite value anywhere comes first, as for a whole tensor:
		// the rows the codec has not read are checked too.
		err = src.checkRest(rows, mr)
	}
	switch {
	case err != nil && !errors.Is(err, errBadInput):
		return encoded{}, fmt.Errorf("tensor %q: %w", t.Name, err)
	case src.f.badIn >= 0 || refused:
		_, err := src.f.verdict(o.Codec, t)
		return fallback(err)
	}
	x := make([]float32, rows*cols)
	y := make([]float32, rows*cols)
	f := src.f
	for k0 := 0; k0 < ch.Len(); {
		if err := ctx.Err(); err != nil {
			return encoded{}, err
		}
		r0, r1 := ch.ChunkRows(k0)
		k1 := k0 + 1
		for k1 < ch.Len() {
			_, e := ch.ChunkRows(k1)
			if e-r0 > rows {
				break
			}
			r1, k1 = e, k1+1
		}
		n := (r1 - r0) * cols
		if err := src.Rows(x[:n], r0, r1); err != nil {
			return encoded{}, err
		}
		if err := ch.DecodeChunks(y[:n], k0, k1); err != nil {
			return encoded{}, fmt.Errorf("tensor %q: decoding its own output: %w", t.Name, err)
		}
		if err := roundTo(y[:n], t.DType); err != nil {
			return encoded{}, fmt.Errorf("tensor %q: %w", t.Name, err)
		}
		f.output(x[:n], y[:n], r0*cols)
		k0 = k1
	}
	st, err := f.verdict(o.Codec, t)
	if err != nil {
		return fallback(err)
	}
	var stats *formats.Stats
	if !o.NoStats {
		stats = &st
	}
	v, coded, err := settleSize(inParts(ctx, release), o, t, b, ch.Size(), stats, false, nil)
	if err != nil || !coded {
		sp.close()
		return v, err
	}
	v.size, v.coder, v.n, v.spill = ch.Size(), ch, ch.Len(), sp
	return v, nil
}
