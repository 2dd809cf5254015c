// Package q4 implements the grouped asymmetric 4-bit quantization shared by
// the int4 codec (package intq) and the residual stage of tenpak_x_v1
// (package tenpakx). The layout is specified in formats/tpk/CODECS.md.
//
// A rows×cols matrix is cut into groups of Group consecutive weights of one
// row; groups never straddle rows, and the last group of a row holds what
// remains. Each group g has an FP16 scale s and offset o; each weight x is
// stored as a 4-bit code
//
//	q = clamp(round((x − o)/s), 0, 15)    (q = 0 when s = 0)
//
// and decodes to q·s + o. Codes are packed two per byte over the whole
// matrix in row-major order: element i (= r·cols + c) is in byte i/2, in the
// low nibble when i is even and the high nibble when i is odd.
package q4

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/bits"

	"github.com/tpconvert/tpconvert/codec/internal/par"
	"github.com/tpconvert/tpconvert/tensor"
)

// ErrRange is returned by Quantize when a group's scale or offset does not
// fit in FP16 (values of magnitude above 65504).
var ErrRange = errors.New("q4: values exceed the FP16 range of scales and offsets")

// Layout describes how a matrix is cut into groups.
type Layout struct {
	Rows, Cols int
	// Group is the number of consecutive weights of a row that share a
	// scale and an offset. 0, or any value ≥ Cols, means one group per row.
	Group int
}

// GroupLen returns the effective group length: Group, or Cols when the
// group is a whole row.
func (l Layout) GroupLen() int {
	if l.Group <= 0 || l.Group >= l.Cols {
		return l.Cols
	}
	return l.Group
}

// GroupsPerRow returns ceil(Cols/GroupLen()), and 0 for an empty row.
func (l Layout) GroupsPerRow() int {
	g := l.GroupLen()
	if g == 0 {
		return 0
	}
	return (l.Cols + g - 1) / g
}

// Sizes returns the number of bytes of packed codes, ceil(Rows·Cols/2), and
// the number of groups, Rows·GroupsPerRow(). It fails for negative
// dimensions and for products that overflow int64 or exceed
// tensor.MaxElems.
func (l Layout) Sizes() (codeBytes, groups int, err error) {
	if l.Rows < 0 || l.Cols < 0 || l.Group < 0 {
		return 0, 0, fmt.Errorf("q4: invalid layout %d×%d group %d", l.Rows, l.Cols, l.Group)
	}
	n, ok := Mul(l.Rows, l.Cols)
	if !ok || int64(n) > tensor.MaxElems {
		return 0, 0, fmt.Errorf("q4: layout %d×%d is too large", l.Rows, l.Cols)
	}
	groups, _ = Mul(l.Rows, l.GroupsPerRow()) // ≤ n
	return n/2 + n%2, groups, nil
}

// Mul returns a·b for non-negative a and b, and whether it fits in an int.
func Mul(a, b int) (int, bool) {
	if a < 0 || b < 0 {
		return 0, false
	}
	hi, lo := bits.Mul64(uint64(a), uint64(b))
	if hi != 0 || lo > math.MaxInt {
		return 0, false
	}
	return int(lo), true
}

// rowGrain is the number of rows a parallel chunk must be a multiple of so
// that no code byte is shared by two chunks.
func (l Layout) rowGrain() int {
	if l.Cols%2 == 1 {
		return 2
	}
	return 1
}

// minChunkRows returns a number of rows worth about 64K weights, the
// smallest piece of work handed to a goroutine.
func (l Layout) minChunkRows() int {
	return max(1, (1<<16)/max(l.Cols, 1))
}

func (l Layout) check(codes []byte, scales, offsets []uint16, n int) {
	nc, ng, err := l.Sizes()
	if err != nil {
		panic(err)
	}
	if len(codes) != nc || len(scales) != ng || len(offsets) != ng || n != l.Rows*l.Cols {
		panic(fmt.Sprintf("q4: buffers do not match layout %d×%d group %d", l.Rows, l.Cols, l.Group))
	}
}

// Quantize quantizes the row-major Rows×Cols matrix x into codes, scales
// and offsets, whose lengths must be those given by l.Sizes (a mismatch is a
// programmer error and panics). The FP16 scale and offset of a group are
// rounded before the codes are computed from them, so the codes absorb
// their rounding. Quantize uses up to workers goroutines; the result does
// not depend on their number. It returns ErrRange if a scale or offset is
// not finite in FP16.
func Quantize(codes []byte, scales, offsets []uint16, x []float32, l Layout, workers int) error {
	l.check(codes, scales, offsets, len(x))
	if len(x)%2 == 1 {
		codes[len(codes)-1] = 0 // the unused high nibble is 0
	}
	gl, gpr := l.GroupLen(), l.GroupsPerRow()
	return par.For(l.Rows, l.rowGrain(), l.minChunkRows(), workers, func(r0, r1 int) error {
		for r := r0; r < r1; r++ {
			for g := range gpr {
				c0 := g * gl
				c1 := min(c0+gl, l.Cols)
				i0 := r*l.Cols + c0
				gi := r*gpr + g
				s, o, ok := Params(x[i0 : i0+c1-c0])
				if !ok {
					return fmt.Errorf("%w (row %d, columns %d-%d)", ErrRange, r, c0, c1-1)
				}
				scales[gi], offsets[gi] = s, o
				encodeGroup(codes, i0, x[i0:i0+c1-c0], tensor.HalfToFloat(s), tensor.HalfToFloat(o))
			}
		}
		return nil
	})
}

// Params returns the FP16 scale and offset of a group holding x:
// offset = fp16(min x) and scale = fp16((max x − offset)/15), and false if
// either is not finite. x must not contain NaN or ±Inf.
func Params(x []float32) (scale, offset uint16, ok bool) {
	if len(x) == 0 {
		return 0, 0, true
	}
	lo, hi := minMax(x)
	offset = tensor.FloatToHalf(lo)
	o := tensor.HalfToFloat(offset)
	scale = tensor.FloatToHalf(max(0, (hi-o)/15))
	s := tensor.HalfToFloat(scale)
	if math.IsInf(float64(o), 0) || math.IsInf(float64(s), 0) || o != o || s != s {
		return 0, 0, false
	}
	return scale, offset, true
}

// minMax returns the smallest and largest element of the non-empty x.
// Four independent running extremes keep the loop free of a long
// dependency chain.
func minMax(x []float32) (lo, hi float32) {
	l0, l1, l2, l3 := x[0], x[0], x[0], x[0]
	h0, h1, h2, h3 := l0, l1, l2, l3
	n := len(x) &^ 3
	for i := 0; i < n; i += 4 {
		v := x[i : i+4 : i+4]
		if v[0] < l0 {
			l0 = v[0]
		}
		if v[0] > h0 {
			h0 = v[0]
		}
		if v[1] < l1 {
			l1 = v[1]
		}
		if v[1] > h1 {
			h1 = v[1]
		}
		if v[2] < l2 {
			l2 = v[2]
		}
		if v[2] > h2 {
			h2 = v[2]
		}
		if v[3] < l3 {
			l3 = v[3]
		}
		if v[3] > h3 {
			h3 = v[3]
		}
	}
	for _, v := range x[n:] {
		if v < l0 {
			l0 = v
		}
		if v > h0 {
			h0 = v
		}
	}
	if l1 < l0 {
		l0 = l1
	}
	if l3 < l2 {
		l2 = l3
	}
	if l2 < l0 {
		l0 = l2
	}
	if h1 > h0 {
		h0 = h1
	}
	if h3 > h2 {
		h2 = h3
	}
	if h2 > h0 {
		h0 = h2
	}
	return l0, h0
}

// encodeGroup writes the codes of x, whose first element is element i0 of
// the matrix, into the packed code bytes.
func encodeGroup(codes []byte, i0 int, x []float32, s, o float32) {
	var inv float32
	if s > 0 {
		inv = 1 / s
	}
	k := 0
	if i0&1 == 1 && len(x) > 0 {
		b := &codes[i0>>1]
		*b = *b&0x0F | code(x[0], o, inv)<<4
		k = 1
	}
	pairs := (len(x) - k) / 2
	xs := x[k : k+2*pairs]
	out := codes[(i0+k)>>1:][:pairs]
	for j := range out {
		out[j] = code(xs[2*j], o, inv) | code(xs[2*j+1], o, inv)<<4
	}
	if k+2*pairs < len(x) {
		b := &codes[(i0+len(x)-1)>>1]
		*b = *b&0xF0 | code(x[len(x)-1], o, inv)
	}
}

// code returns clamp(round((v − o)·inv), 0, 15), rounding half up.
func code(v, o, inv float32) byte {
	t := float32(v-o)*inv + 0.5
	if t >= 15 {
		return 15
	}
	if t > 0 {
		return byte(t)
	}
	return 0
}

// Dequantize decodes codes, scales and offsets into the row-major Rows×Cols
// matrix dst, computing q·s + o in float32 for each element; with add it
// adds the decoded values to dst instead of storing them. Buffer lengths
// must be those given by l.Sizes (a mismatch panics). Dequantize uses up to
// workers goroutines.
func Dequantize(dst []float32, codes []byte, scales, offsets []uint16, l Layout, add bool, workers int) {
	l.check(codes, scales, offsets, len(dst))
	s := &Section{l: l, codes: codes, scales: scales, offsets: offsets}
	par.For(l.Rows, 1, l.minChunkRows(), workers, func(r0, r1 int) error {
		s.DequantizeRows(dst, r0, r1, add)
		return nil
	})
}

// Section is a validated section (see Encode) ready to be decoded.
type Section struct {
	l               Layout
	codes           []byte
	scales, offsets []uint16
}

// DequantizeRows decodes rows [r0, r1) of the section into the same rows
// of the row-major Rows×Cols matrix dst, adding to dst with add. Calls for
// disjoint row ranges may run concurrently.
func (s *Section) DequantizeRows(dst []float32, r0, r1 int, add bool) {
	s.rows(dst, 0, r0, r1, 0, add)
}

// rows decodes rows [r0, r1) into dst, whose element 0 is matrix element
// base, with s.scales and s.offsets starting at group g0.
func (s *Section) rows(dst []float32, base, r0, r1, g0 int, add bool) {
	l := s.l
	gl, gpr := l.GroupLen(), l.GroupsPerRow()
	var lut [16]float32
	for r := r0; r < r1; r++ {
		for g := range gpr {
			c0 := g * gl
			c1 := min(c0+gl, l.Cols)
			i0 := r*l.Cols + c0
			gi := r*gpr + g - g0
			sc, o := tensor.HalfToFloat(s.scales[gi]), tensor.HalfToFloat(s.offsets[gi])
			for q := range lut {
				lut[q] = float32(float32(q)*sc) + o
			}
			decodeGroup(dst[i0-base:i0-base+c1-c0], s.codes, i0, &lut, add)
		}
	}
}

func decodeGroup(dst []float32, codes []byte, i0 int, lut *[16]float32, add bool) {
	k := 0
	if i0&1 == 1 && len(dst) > 0 {
		v := lut[codes[i0>>1]>>4]
		if add {
			dst[0] += v
		} else {
			dst[0] = v
		}
		k = 1
	}
	// Now element i0+k is even: whole bytes.
	b := codes[(i0+k)>>1:]
	pairs := (len(dst) - k) / 2
	d := dst[k : k+2*pairs]
	b = b[:pairs]
	if add {
		for j, c := range b {
			d[2*j] += lut[c&15]
			d[2*j+1] += lut[c>>4]
		}
	} else {
		for j, c := range b {
			d[2*j] = lut[c&15]
			d[2*j+1] = lut[c>>4]
		}
	}
	if k+2*pairs < len(dst) {
		v := lut[codes[(i0+len(dst)-1)>>1]&15]
		if add {
			dst[len(dst)-1] += v
		} else {
			dst[len(dst)-1] = v
		}
	}
}

// SectionSize returns the size of the section that Encode writes for l:
// ceil(Rows·Cols/2) code bytes followed by 2·groups bytes of FP16 scales
// and 2·groups bytes of FP16 offsets.
func (l Layout) SectionSize() (int, error) {
	nc, ng, err := l.Sizes()
	if err != nil {
		return 0, err
	}
	return nc + 4*ng, nil
}

// Encode quantizes the row-major matrix x and writes the section of layout
// l into dst, whose length must be l.SectionSize(): packed codes, then the
// scales, then the offsets, each FP16 little-endian in group order (row by
// row, left to right). See Quantize for workers and errors.
func Encode(dst []byte, x []float32, l Layout, workers int) error {
	nc, ng, err := l.Sizes()
	if err != nil {
		return err
	}
	if len(dst) != nc+4*ng {
		panic(fmt.Sprintf("q4: section buffer of %d bytes for layout %d×%d group %d", len(dst), l.Rows, l.Cols, l.Group))
	}
	scales, offsets := make([]uint16, ng), make([]uint16, ng)
	if err := Quantize(dst[:nc], scales, offsets, x, l, workers); err != nil {
		return err
	}
	b := dst[nc:]
	for i, s := range scales {
		binary.LittleEndian.PutUint16(b[2*i:], s)
	}
	b = b[2*ng:]
	for i, o := range offsets {
		binary.LittleEndian.PutUint16(b[2*i:], o)
	}
	return nil
}

// ErrSection is returned by Decode for a section of the wrong size or with
// a scale or offset that is not finite.
var ErrSection = errors.New("q4: invalid section")

// Parse checks a section written by Encode for layout l: it returns an
// error wrapping ErrSection if len(src) is not l.SectionSize() or a scale or
// offset is NaN or infinite. The Section refers to src.
func Parse(src []byte, l Layout) (*Section, error) {
	nc, ng, err := l.Sizes()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrSection, err)
	}
	if len(src) != nc+4*ng {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrSection, len(src), nc+4*ng)
	}
	halves := make([]uint16, 2*ng)
	for i := range halves {
		h := binary.LittleEndian.Uint16(src[nc+2*i:])
		if h&0x7C00 == 0x7C00 {
			kind := "scale"
			if i >= ng {
				kind = "offset"
			}
			return nil, fmt.Errorf("%w: group %d %s is not finite (0x%04x)", ErrSection, i%ng, kind, h)
		}
		halves[i] = h
	}
	return &Section{l: l, codes: src[:nc], scales: halves[:ng], offsets: halves[ng:]}, nil
}

// Decode decodes a section written by Encode into the row-major matrix
// dst (len(dst) must be Rows·Cols; a mismatch panics), adding to dst with
// add. It returns Parse's error, leaving dst unchanged.
func Decode(dst []float32, src []byte, l Layout, add bool, workers int) error {
	s, err := Parse(src, l)
	if err != nil {
		return err
	}
	Dequantize(dst, s.codes, s.scales, s.offsets, l, add, workers)
	return nil
}

// DecodeRows decodes rows [r0, r1) of a section written by Encode for
// layout l into dst (len(dst) must be (r1−r0)·Cols; a mismatch panics),
// with the values Decode gives them. It checks the section's length, as
// Parse does, but the scales and offsets of those rows only.
func DecodeRows(dst []float32, src []byte, l Layout, r0, r1 int) error {
	nc, ng, err := l.Sizes()
	if err != nil {
		return fmt.Errorf("%w: %v", ErrSection, err)
	}
	if len(src) != nc+4*ng {
		return fmt.Errorf("%w: %d bytes, want %d", ErrSection, len(src), nc+4*ng)
	}
	if r0 < 0 || r0 > r1 || r1 > l.Rows || len(dst) != (r1-r0)*l.Cols {
		panic(fmt.Sprintf("q4: rows [%d, %d) of %d into %d values", r0, r1, l.Rows, len(dst)))
	}
	gpr := l.GroupsPerRow()
	g0, n := r0*gpr, (r1-r0)*gpr
	halves := make([]uint16, 2*n)
	for i := range halves {
		kind, g := "scale", g0+i%n
		if i >= n {
			kind = "offset"
		}
		h := binary.LittleEndian.Uint16(src[nc+2*(i/n*ng+g):])
		if h&0x7C00 == 0x7C00 {
			return fmt.Errorf("%w: group %d %s is not finite (0x%04x)", ErrSection, g, kind, h)
		}
		halves[i] = h
	}
	s := &Section{l: l, codes: src[:nc], scales: halves[:n], offsets: halves[n:]}
	s.rows(dst, r0*l.Cols, r0, r1, g0, false)
	return nil
}
