package tenpakx3

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/klauspost/compress/fse"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/codec/internal/par"
	"github.com/tpconvert/tpconvert/tensor"
)

// Streamed encoding (codec.StreamEncoder). A tensor's coding needs three
// kinds of pass over its rows, all in order: the first pass (sums and
// classes), the rows its step's statistics sample (every stride-th, at
// least 2^18 weights: gathered once) and one coding pass per step tried.
// EncodeStream runs each over windows of whole row groups, with the same
// chunking of every sum as Encode's single window, so the payload is the
// same bytes. The coded row groups of each window go to the end of the
// spill (each step tried after the last), and are read back, or coded
// again from the source, when the pipeline writes or checks them: a chunk
// of the payload is one row group, the header before the first.

var _ codec.StreamEncoder = (*Codec)(nil)

// groupRows returns the rows of a row group of a matrix of cols columns.
func groupRows(cols int) int { return max(1, GroupWeights/cols) }

// StreamAlign implements codec.StreamEncoder: the rows of a row group.
func (c *Codec) StreamAlign(t tensor.Info) int64 {
	_, cols := t.Matrix()
	return int64(groupRows(int(max(cols, 1))))
}

// StreamCost implements codec.StreamEncoder: a window's values and coded
// bytes (at most about 2 per weight), the groups in flight (as Cost), the
// first pass's column sums in flight, the sample of rows, and the per-row
// and per-group statistics.
func (c *Codec) StreamCost(t tensor.Info, rows int64) int64 {
	r, cols := t.Matrix()
	cols = max(cols, 1)
	g := int64(GroupWeights) + cols
	w := int64(c.workers)
	stride := int64(statStride(int(min(r, 1<<31)), int(min(cols, 1<<31))))
	sample := ((r+stride-1)/stride + 1) * cols * 4
	first := max(firstBatch, w*8*cols) + 8*cols
	rpg := int64(groupRows(int(cols)))
	ng := (r + rpg - 1) / rpg
	return 6*rows*cols + w*6*g + first + sample + 10*r + ng*(int64(binSize)+48) + 2*cols + 1<<20
}

// binSize is the bytes of one group's binSums.
const binSize = 2 * (NTheta + 1) * 8

// EncodeStream implements codec.StreamEncoder.
func (c *Codec) EncodeStream(ctx context.Context, t tensor.Info, src codec.RowSource, window int64, spill codec.Spill, done func(elems int64)) (codec.StreamChunks, error) {
	rows, cols, err := checkShape(t)
	if err != nil {
		return nil, err
	}
	j, err := c.job(t, cols)
	if err != nil {
		return nil, err
	}
	rpg := groupRows(cols)
	win := int(max(window/int64(rpg), 1)) * rpg
	win = min(win, (rows+rpg-1)/rpg*rpg)
	m := &matrix{rows: rows, cols: cols, win: win, ctx: ctx, src: src, buf: make([]float32, min(win, rows)*cols),
		spill: spill, done: done}
	m.spillOK.Store(spill != nil)
	acc := newFirstAcc(rows, cols, j.jcol)
	for w0 := 0; w0 < rows; w0 += win {
		w1 := min(rows, w0+win)
		x, err := m.window(w0, w1)
		if err != nil {
			return nil, err
		}
		if err := checkFinite(x, int64(w0)*int64(cols)); err != nil {
			return nil, fmt.Errorf("tenpak_x_v3: tensor %q: %w", t.Name, err)
		}
		acc.add(x, w0, w1, c.workers)
	}
	pr := prepared(acc.st, rows, cols, j.jcol, c.ncls)
	m.stride = statStride(rows, cols)
	m.sample = make([]float32, (rows+m.stride-1)/m.stride*cols)
	for r := 0; r < rows; r += m.stride {
		i := r / m.stride
		if err := src.Rows(m.sample[i*cols:(i+1)*cols], int64(r), int64(r)+1); err != nil {
			return nil, err
		}
	}
	res, err := c.encodeFit(m, pr, j, t)
	if err != nil {
		return nil, err
	}
	m.buf, m.sample = nil, nil
	h, _, _, err := parseHeader(res.hdr, t, Version)
	if err != nil {
		return nil, fmt.Errorf("tenpak_x_v3: tensor %q: its own header: %w", t.Name, err)
	}
	dp, rc, err := h.decoder()
	if err != nil {
		return nil, fmt.Errorf("tenpak_x_v3: tensor %q: its own header: %w", t.Name, err)
	}
	return &streamed{m: m, e: res, dp: dp, lt: newLevelTab(dp, &rc, math.Float32bits), rpg: rpg, workers: c.workers}, nil
}

// streamed is a tensor coded by EncodeStream: its chunks are its row
// groups.
type streamed struct {
	m       *matrix
	e       *encoded
	dp      *params // the decoder's, from the header
	lt      *levelTab[uint32]
	rpg     int
	workers int
}

func (s *streamed) Size() int64 { return s.e.size }

func (s *streamed) Len() int { return len(s.e.lens) }

func (s *streamed) ChunkRows(k int) (int64, int64) {
	return int64(k * s.rpg), int64(min(s.m.rows, (k+1)*s.rpg))
}

// AppendChunks implements codec.Chunks: group k's bytes, the header and
// group table before group 0.
func (s *streamed) AppendChunks(dst []byte, k0, k1 int) ([]byte, error) {
	var sc fse.Scratch
	for k := k0; k < k1; k++ {
		if k == 0 {
			dst = append(dst, s.e.hdr...)
		}
		var err error
		if dst, err = s.group(dst, k, &sc); err != nil {
			return nil, err
		}
	}
	return dst, nil
}

// group appends group g's bytes to dst: read from the spill, or coded
// again from the source.
func (s *streamed) group(dst []byte, g int, sc *fse.Scratch) ([]byte, error) {
	n := s.e.lens[g]
	if s.e.spilled {
		start := len(dst)
		dst = slices.Grow(dst, n)[:start+n]
		if k, _ := s.m.spill.ReadAt(dst[start:], s.e.offs[g]); k == n {
			return dst, nil
		}
		dst = dst[:start]
	}
	r0, r1 := s.ChunkRows(g)
	x := make([]float32, (r1-r0)*int64(s.m.cols))
	if err := s.m.src.Rows(x, r0, r1); err != nil {
		return nil, err
	}
	out, err := s.e.p.codeGroup(x, int(r0), int(r1), sc)
	if err != nil {
		return nil, fmt.Errorf("tenpak_x_v3: coding group %d again: %w", g, err)
	}
	if len(out.data) != n {
		return nil, fmt.Errorf("tenpak_x_v3: group %d coded again in %d bytes, not %d", g, len(out.data), n)
	}
	return append(dst, out.data...), nil
}

// DecodeChunks implements codec.StreamChunks.
func (s *streamed) DecodeChunks(dst []float32, k0, k1 int) error {
	cols := s.m.cols
	base, _ := s.ChunkRows(k0)
	if _, end := s.ChunkRows(k1 - 1); k0 >= k1 || int64(len(dst)) != (end-base)*int64(cols) {
		return fmt.Errorf("tenpak_x_v3: %d values for groups [%d, %d)", len(dst), k0, k1)
	}
	return par.For(k1-k0, 1, 1, s.workers, func(a, b int) error {
		var sc scratch
		var buf []byte
		for g := k0 + a; g < k0+b; g++ {
			var err error
			if buf, err = s.group(buf[:0], g, &sc.fse); err != nil {
				return err
			}
			r0, r1 := s.ChunkRows(g)
			out := f32bits(dst[(r0-base)*int64(cols) : (r1-base)*int64(cols)])
			if err := decodeGroup(s.dp, out, buf, int(r0), int(r1), s.lt, &sc, nil); err != nil {
				return fmt.Errorf("tenpak_x_v3: group %d: %w", g, err)
			}
		}
		return nil
	})
}
