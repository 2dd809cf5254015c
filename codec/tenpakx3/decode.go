package tenpakx3

import (
	"encoding/binary"
	"fmt"
	"math"
	"unsafe"

	"github.com/klauspost/compress/fse"

	"github.com/tpconvert/tpconvert/codec/internal/par"
	"github.com/tpconvert/tpconvert/tensor"
)

// The decoder writes each weight as the bits of its output type: float32
// (Decode, DecodeRows) or the float dtype DecodeRowsTo was asked for. The
// bits of a magnitude's level are looked up for small magnitudes
// (levelTab); the sign is one bit, since every dtype here rounds -x to
// exactly the negation of x.

// word is the bits of one decoded weight: float32 or F32 bits (uint32),
// F16 or BF16 bits (uint16).
type word interface{ ~uint16 | ~uint32 }

// levelTab holds, for the magnitudes 0 ≤ m < n and each distinct column
// step Δ_c, the output bits of the level float32(ℓ(m)·Δ_c) (0 for m = 0),
// converted by conv: the same bits the decoder computes for larger m. No
// tabulated level overflows float32 (n stops below the first that does).
type levelTab[U word] struct {
	n    uint64
	col  []int32 // per column: where its step's n entries start in v
	v    []U
	off  [NTheta + 1]float64
	conv func(float32) U
}

// newLevelTab tabulates up to 512 magnitudes per distinct column step of p.
func newLevelTab[U word](p *params, rc *recon, conv func(float32) U) *levelTab[U] {
	lt := &levelTab[U]{n: min(uint64(256)<<p.shift, 512), col: make([]int32, p.cols), off: rc.offsets(), conv: conv}
	var at [256]int32
	for i := range at {
		at[i] = -1
	}
	var lv [][]float32
	for c := range p.cols {
		j := 128
		if p.jcol != nil {
			j += int(p.jcol[c])
		}
		if at[j] < 0 {
			at[j] = int32(len(lv))
			l := make([]float32, lt.n)
			for m := range lt.n {
				l[m] = lt.level(m, p.stepc[c])
				if math.IsInf(float64(l[m]), 0) {
					lt.n = m // levels increase with m
					break
				}
			}
			lv = append(lv, l)
		}
		lt.col[c] = at[j]
	}
	lt.v = make([]U, 0, len(lv)*int(lt.n))
	for _, l := range lv {
		for _, x := range l[:lt.n] {
			lt.v = append(lt.v, conv(x))
		}
	}
	for c := range lt.col {
		lt.col[c] *= int32(lt.n)
	}
	return lt
}

// level returns float32(ℓ(m)·sc), ℓ(m) = m − θ_min(m,8)/256 (exact in
// float64 for m ≤ 2^40), 0 for m = 0.
func (lt *levelTab[U]) level(m uint64, sc float32) float32 {
	return float32((float64(m) - lt.off[min(m, NTheta)]) * float64(sc))
}

// f32bits returns the memory of x as float32 bits.
func f32bits(x []float32) []uint32 {
	return unsafe.Slice((*uint32)(unsafe.Pointer(unsafe.SliceData(x))), len(x))
}

func (c *Codec) decodeRows(dst []float32, h *header, r0, r1 int) error {
	u := f32bits(dst)
	cols := h.cols
	return eachGroup(c, h, r0, r1, math.Float32bits, func(p *params, g, gr0, gr1 int, lt *levelTab[uint32], sc *scratch, buf *[]uint32) error {
		if gr0 >= r0 && gr1 <= r1 {
			return decodeGroup(p, u[(gr0-r0)*cols:(gr1-r0)*cols], h.groups[g], gr0, gr1, lt, sc, nil)
		}
		return decodeGroup(p, rowBuf(buf, cols), h.groups[g], gr0, gr1, lt, sc, func(r int, row []uint32) error {
			if r >= r0 && r < r1 {
				copy(u[(r-r0)*cols:], row)
			}
			return nil
		})
	})
}

// DecodeRowsTo implements codec.FloatDecoder: rows [r0, r1) a row at a
// time, each weight's bits in d looked up with its level (F16, BF16, F32)
// or converted by tensor.FromFloat32 from the decoded row (F64).
func (c *Codec) DecodeRowsTo(dst []byte, d tensor.DType, payload []byte, t tensor.Info, version uint16, r0, r1 int64) error {
	h, err := parse(payload, t, version)
	if err != nil {
		return err
	}
	rb := int64(h.cols) * d.BlockBytes()
	if !d.IsFloat() || r0 < 0 || r0 > r1 || r1 > int64(h.rows) || int64(len(dst)) != (r1-r0)*rb {
		return fmt.Errorf("tenpak_x_v3: rows [%d, %d) of %d into %d bytes of %s", r0, r1, h.rows, len(dst), d)
	}
	out := func(r int) []byte {
		if int64(r) < r0 || int64(r) >= r1 {
			return nil
		}
		o := (int64(r) - r0) * rb
		return dst[o : o+rb]
	}
	switch d {
	case tensor.F16, tensor.BF16:
		conv := tensor.FloatToHalf
		if d == tensor.BF16 {
			conv = tensor.FloatToBF16
		}
		return eachGroup(c, h, int(r0), int(r1), conv, func(p *params, g, gr0, gr1 int, lt *levelTab[uint16], sc *scratch, buf *[]uint16) error {
			if littleEndian && gr0 >= int(r0) && gr1 <= int(r1) {
				// Straight into dst, whose words are little-endian here,
				// when they are aligned.
				if o := unsafe.Pointer(unsafe.SliceData(dst[(int64(gr0)-r0)*rb:])); uintptr(o)%2 == 0 {
					return decodeGroup(p, unsafe.Slice((*uint16)(o), (gr1-gr0)*h.cols), h.groups[g], gr0, gr1, lt, sc, nil)
				}
			}
			return decodeGroup(p, rowBuf(buf, h.cols), h.groups[g], gr0, gr1, lt, sc, func(r int, row []uint16) error {
				if o := out(r); o != nil {
					for i, v := range row {
						binary.LittleEndian.PutUint16(o[2*i:], v)
					}
				}
				return nil
			})
		})
	}
	return eachGroup(c, h, int(r0), int(r1), math.Float32bits, func(p *params, g, gr0, gr1 int, lt *levelTab[uint32], sc *scratch, buf *[]uint32) error {
		return decodeGroup(p, rowBuf(buf, h.cols), h.groups[g], gr0, gr1, lt, sc, func(r int, row []uint32) error {
			o := out(r)
			if o == nil {
				return nil
			}
			if d == tensor.F32 {
				for i, v := range row {
					binary.LittleEndian.PutUint32(o[4*i:], v)
				}
				return nil
			}
			return tensor.FromFloat32(o, d, unsafe.Slice((*float32)(unsafe.Pointer(unsafe.SliceData(row))), len(row)))
		})
	})
}

// littleEndian is whether this machine stores a word's low byte first.
var littleEndian = func() bool {
	x := uint16(1)
	return *(*byte)(unsafe.Pointer(&x)) == 1
}()

// rowBuf returns *buf holding at least n words, n long.
func rowBuf[U word](buf *[]U, n int) []U {
	if cap(*buf) < n {
		*buf = make([]U, n)
	}
	return (*buf)[:n]
}

// eachGroup calls decode, in parallel, for every row group that holds
// rows of [r0, r1), with the group's rows [gr0, gr1), the level table of
// conv and a worker's scratch.
func eachGroup[U word](c *Codec, h *header, r0, r1 int, conv func(float32) U, decode func(p *params, g, gr0, gr1 int, lt *levelTab[U], sc *scratch, buf *[]U) error) error {
	if r0 == r1 {
		return nil
	}
	p, rc, err := h.decoder()
	if err != nil {
		return err
	}
	lt := newLevelTab(p, &rc, conv)
	g0, g1 := r0/h.rpg, (r1-1)/h.rpg+1
	return par.For(g1-g0, 1, 1, c.workers, func(a, b int) error {
		var sc scratch
		var buf []U
		for g := g0 + a; g < g0+b; g++ {
			gr0, gr1 := g*h.rpg, min(h.rows, (g+1)*h.rpg)
			if err := decode(p, g, gr0, gr1, lt, &sc, &buf); err != nil {
				return fmt.Errorf("group %d: %w", g, err)
			}
		}
		return nil
	})
}

// decodeGroup decodes rows [r0, r1) from their group's bytes q: into
// dst, all the group's rows, when emit is nil; otherwise each row in turn
// into dst (one row long) and then to emit.
// scratch is a decoding worker's: the FSE decoder and its output buffers,
// one per context, reused from group to group.
type scratch struct {
	fse  fse.Scratch
	syms [maxCtx][]byte
}

func decodeGroup[U word](p *params, dst []U, q []byte, r0, r1 int, lt *levelTab[U], sc *scratch, emit func(r int, row []U) error) error {
	nctx := p.nrc * p.ncc
	cnt := p.counts(r0, r1)
	var syms [maxCtx][]byte
	var err error
	for k := range nctx {
		if cnt[k] == 0 {
			continue
		}
		owned := len(q) > 0 && q[0] == modeFSE // else q's bytes or its own
		if syms[k], q, err = readBlock(q, cnt[k], &sc.fse, sc.syms[k]); err != nil {
			return err
		}
		if owned {
			sc.syms[k] = syms[k]
		}
	}
	sc.fse.Out = nil // the buffers are sc.syms' alone
	el, m := binary.Uvarint(q)
	if m <= 0 || el > uint64(len(q)-m) {
		return corrupt("escape stream length")
	}
	esc := q[m : m+int(el)]
	low := bitReader{src: q[m+int(el):]}
	var pos [maxCtx]int
	var zero U
	sign := uint(unsafe.Sizeof(zero))*8 - 1
	w := p.shift
	need := w + 1 // raw bits of one weight, its sign included
	stepc, ccls := p.stepc[:p.cols], p.ccls
	tab, col, n := lt.v, lt.col[:p.cols], lt.n
	for r := r0; r < r1; r++ {
		var row []U
		if emit != nil {
			row = dst[:p.cols]
		} else {
			row = dst[(r-r0)*p.cols : (r-r0+1)*p.cols]
		}
		base := p.rowBase(r)
		for c := range row {
			k := base
			if ccls != nil {
				k += int(ccls[c])
			}
			hi := uint64(syms[k][pos[k]])
			pos[k]++
			if hi == escSym {
				v, m := binary.Uvarint(esc)
				if m <= 0 || v > maxMag {
					return corrupt("escape value")
				}
				esc = esc[m:]
				hi = escSym + v
				if hi > maxMag>>w {
					return corrupt("magnitude of %d high bits", hi)
				}
			}
			if low.nacc < need {
				low.fill()
				if low.nacc < w {
					return corrupt("raw bits end early")
				}
			}
			// The low bits, then the sign unless the magnitude is 0,
			// without a branch on the value.
			peek := low.acc
			mg := hi<<w | peek&(uint64(1)<<w-1)
			var nz uint
			if mg != 0 {
				nz = 1
			}
			var v U
			if mg < n {
				v = tab[col[c]+int32(mg)]
			} else {
				if mg > maxMag {
					return corrupt("magnitude %d", mg)
				}
				x := lt.level(mg, stepc[c])
				if math.IsInf(float64(x), 0) {
					return corrupt("weight overflows")
				}
				v = lt.conv(x)
			}
			if low.nacc < w+nz {
				return corrupt("raw bits end early")
			}
			row[c] = v | U(peek>>w&uint64(nz))<<sign
			low.acc >>= w + nz
			low.nacc -= w + nz
		}
		if emit != nil {
			if err := emit(r, row); err != nil {
				return err
			}
		}
	}
	if len(esc) != 0 {
		return corrupt("%d bytes left in the escape stream", len(esc))
	}
	if low.i != len(low.src) || low.nacc >= 8 || low.acc != 0 {
		return corrupt("raw bits: %d bytes of %d read, padding %#x", low.i-int(low.nacc/8), len(low.src), low.acc)
	}
	return nil
}
