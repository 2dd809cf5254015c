package tenpakx2

import (
	"math"

	"github.com/tpconvert/tpconvert/tensor"
)

// clipFactors are the fractions of a group's range (uniform) or of its
// largest magnitude (symmetric) tried by the encoder; the one with the
// least (importance-weighted) squared error wins. 1 comes first, so a
// group that already lies on the grid is reproduced.
func clipFactors(bits int) []float32 {
	switch {
	case bits <= 2:
		return []float32{1, 0.9, 0.8, 0.7, 0.6}
	case bits == 3:
		return []float32{1, 0.93, 0.86, 0.79, 0.72}
	case bits == 4:
		return []float32{1, 0.95, 0.9, 0.85}
	case bits <= 6:
		return []float32{1, 0.95}
	}
	return []float32{1}
}

// neighbours returns s (a positive finite FP16 value) and, if both is
// set, its two FP16 neighbours.
func neighbours(s uint16, both bool) []uint16 {
	if !both || s == 0 || s >= 0x7bff {
		return []uint16{s}
	}
	return []uint16{s, s - 1, s + 1}
}

// normalFactors scale a group's RMS into the scale of the normal grid.
var normalFactors = []float32{0.85, 1, 1.15}

// quantizer codes rows with one configuration. It is read-only after
// creation and safe for concurrent use.
type quantizer struct {
	cfg    Config
	levels []float32 // GridNormal: the levels (unit variance), ascending
	thr    []float32 // GridNormal: midpoints between levels
	signs  []float32 // GridNormal with rotation: ±1 per column
	hblk   int       // Hadamard block, 0 for none
}

func newQuantizer(cfg Config, cols int, seed uint32) *quantizer {
	q := &quantizer{cfg: cfg}
	if cfg.Grid == GridNormal {
		q.setLevels(normalLevels[cfg.Bits])
		q.hblk = hadamardBlock(cols)
		if q.hblk > 0 {
			q.signs = signs(cols, seed)
		}
	}
	return q
}

func (q *quantizer) setLevels(lv []float32) {
	q.levels = lv
	q.thr = make([]float32, len(lv)-1)
	for i := range q.thr {
		q.thr[i] = (lv[i] + lv[i+1]) / 2
	}
}

// signs returns the ±1 column signs of the rotation, from a SplitMix64
// stream seeded with seed.
func signs(cols int, seed uint32) []float32 {
	s := make([]float32, cols)
	state := uint64(seed)*0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019
	var bits uint64
	for i := range s {
		if i%64 == 0 {
			state += 0x9E3779B97F4A7C15
			z := state
			z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
			z = (z ^ (z >> 27)) * 0x94D049BB133111EB
			bits = z ^ (z >> 31)
		}
		if bits&1 == 1 {
			s[i] = -1
		} else {
			s[i] = 1
		}
		bits >>= 1
	}
	return s
}

// fwht applies the normalized Walsh–Hadamard transform in place to each
// block of h consecutive elements of x (len(x) a multiple of h).
func fwht(x []float32, h int) {
	norm := float32(1 / math.Sqrt(float64(h)))
	for b := 0; b < len(x); b += h {
		v := x[b : b+h]
		for s := 1; s < h; s <<= 1 {
			for i := 0; i < h; i += s << 1 {
				a, c := v[i:i+s], v[i+s:i+2*s]
				for j := range a {
					u, w := a[j], c[j]
					a[j], c[j] = u+w, u-w
				}
			}
		}
		for i := range v {
			v[i] *= norm
		}
	}
}

// rotate maps a row into the coded domain (in place).
func (q *quantizer) rotate(x []float32) {
	if q.hblk == 0 {
		return
	}
	for i, s := range q.signs {
		x[i] *= s
	}
	fwht(x, q.hblk)
}

// unrotate maps a row from the coded domain back (in place).
func (q *quantizer) unrotate(x []float32) {
	if q.hblk == 0 {
		return
	}
	fwht(x, q.hblk)
	for i, s := range q.signs {
		x[i] *= s
	}
}

// nearest returns the index of the level nearest to v (GridNormal).
func (q *quantizer) nearest(v float32) int {
	lo, hi := 0, len(q.thr)
	for lo < hi {
		m := (lo + hi) / 2
		if v > q.thr[m] {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// quantRow codes one row x (in the coded domain) group by group: codes
// gets one code per weight, scales (and mins for GridUniform) one FP16
// value per group, y the reconstruction. imp, if not nil, weights each
// column's squared error when choosing clipping (not for GridNormal,
// whose rotated columns mix all weights of a block).
func (q *quantizer) quantRow(x, imp []float32, codes []uint8, scales, mins []uint16, y []float32) {
	g := q.cfg.Group
	tc, ty := make([]uint8, min(g, len(x))), make([]float32, min(g, len(x)))
	for gi, lo := 0, 0; lo < len(x); gi, lo = gi+1, lo+g {
		hi := min(lo+g, len(x))
		tmpc, tmpy := tc[:hi-lo], ty[:hi-lo]
		var w []float32
		if imp != nil {
			w = imp[lo:hi]
		}
		switch q.cfg.Grid {
		case GridUniform:
			scales[gi], mins[gi] = q.uniformGroup(x[lo:hi], w, codes[lo:hi], y[lo:hi], tmpc, tmpy)
		case GridSymmetric:
			scales[gi] = q.symmetricGroup(x[lo:hi], w, codes[lo:hi], y[lo:hi], tmpc, tmpy)
		case GridNormal:
			scales[gi] = q.normalGroup(x[lo:hi], codes[lo:hi], y[lo:hi], tmpc, tmpy)
		}
	}
}

func sqerr(x, y, w []float32) float64 {
	var e float64
	if w == nil {
		for i := range x {
			d := float64(x[i] - y[i])
			e += d * d
		}
		return e
	}
	for i := range x {
		d := float64(x[i] - y[i])
		e += float64(w[i]) * d * d
	}
	return e
}

func (q *quantizer) uniformGroup(x, w []float32, codes []uint8, y []float32, tmpc []uint8, tmpy []float32) (uint16, uint16) {
	mn, mx := x[0], x[0]
	for _, v := range x {
		mn, mx = min(mn, v), max(mx, v)
	}
	qmax := float32(int(1)<<q.cfg.Bits - 1)
	best := math.Inf(1)
	var bs, bm uint16
	for _, f := range clipFactors(q.cfg.Bits) {
		c, h := (mn+mx)/2, (mx-mn)/2*f
		lo, hi := mn, mx
		if f != 1 {
			lo, hi = c-h, c+h
		}
		m16 := tensor.FloatToHalf(lo)
		m := tensor.HalfToFloat(m16)
		s16 := tensor.FloatToHalf((hi - m) / qmax)
		// Unclipped, the FP16 neighbours of the scale are tried too: the
		// one a checkpoint was quantized with may round differently.
		for _, ds := range neighbours(s16, f == 1) {
			s := tensor.HalfToFloat(ds)
			for i, v := range x {
				k := float32(0)
				if s > 0 {
					k = float32(math.Round(float64((v - m) / s)))
					k = min(max(k, 0), qmax)
				}
				tmpc[i] = uint8(k)
				tmpy[i] = k*s + m
			}
			if e := sqerr(x, tmpy, w); e < best {
				best, bs, bm = e, ds, m16
				copy(codes, tmpc)
				copy(y, tmpy)
				if e == 0 {
					return bs, bm
				}
			}
		}
	}
	return bs, bm
}

func (q *quantizer) symmetricGroup(x, w []float32, codes []uint8, y []float32, tmpc []uint8, tmpy []float32) uint16 {
	var amax float32
	for _, v := range x {
		amax = max(amax, float32(math.Abs(float64(v))))
	}
	qmax := float32(int(1)<<(q.cfg.Bits-1) - 1)
	best := math.Inf(1)
	var bs uint16
	for _, f := range clipFactors(q.cfg.Bits) {
		for _, s16 := range neighbours(tensor.FloatToHalf(amax*f/qmax), f == 1) {
			s := tensor.HalfToFloat(s16)
			for i, v := range x {
				k := float32(0)
				if s > 0 {
					k = float32(math.Round(float64(v / s)))
					k = min(max(k, -qmax), qmax)
				}
				tmpc[i] = uint8(int(k + qmax))
				tmpy[i] = k * s
			}
			if e := sqerr(x, tmpy, w); e < best {
				best, bs = e, s16
				copy(codes, tmpc)
				copy(y, tmpy)
				if e == 0 {
					return bs
				}
			}
		}
	}
	return bs
}

func (q *quantizer) normalGroup(x []float32, codes []uint8, y []float32, tmpc []uint8, tmpy []float32) uint16 {
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	rms := float32(math.Sqrt(ss / float64(len(x))))
	best := math.Inf(1)
	var bs uint16
	try := func(s16 uint16) {
		s := tensor.HalfToFloat(s16)
		for i, v := range x {
			k := 0
			if s > 0 {
				k = q.nearest(v / s)
			} else {
				k = q.nearest(0)
			}
			tmpc[i] = uint8(k)
			tmpy[i] = q.levels[k] * s
		}
		if e := sqerr(x, tmpy, nil); e < best {
			best, bs = e, s16
			copy(codes, tmpc)
			copy(y, tmpy)
		}
	}
	for _, f := range normalFactors {
		try(tensor.FloatToHalf(rms * f))
	}
	// Least-squares scale for the best assignment so far.
	var num, den float64
	for i, v := range x {
		l := float64(q.levels[codes[i]])
		num += float64(v) * l
		den += l * l
	}
	if den > 0 {
		try(tensor.FloatToHalf(float32(num / den)))
	}
	return bs
}

// decodeGroupRow reconstructs one row (in the coded domain) from its codes
// and group scales.
func (q *quantizer) decodeRow(codes []uint8, scales, mins []uint16, y []float32) {
	g := q.cfg.Group
	switch q.cfg.Grid {
	case GridUniform:
		for gi, lo := 0, 0; lo < len(y); gi, lo = gi+1, lo+g {
			s, m := tensor.HalfToFloat(scales[gi]), tensor.HalfToFloat(mins[gi])
			for i := lo; i < min(lo+g, len(y)); i++ {
				y[i] = float32(codes[i])*s + m
			}
		}
	case GridSymmetric:
		qmax := float32(int(1)<<(q.cfg.Bits-1) - 1)
		for gi, lo := 0, 0; lo < len(y); gi, lo = gi+1, lo+g {
			s := tensor.HalfToFloat(scales[gi])
			for i := lo; i < min(lo+g, len(y)); i++ {
				y[i] = (float32(codes[i]) - qmax) * s
			}
		}
	case GridNormal:
		for gi, lo := 0, 0; lo < len(y); gi, lo = gi+1, lo+g {
			s := tensor.HalfToFloat(scales[gi])
			for i := lo; i < min(lo+g, len(y)); i++ {
				y[i] = q.levels[codes[i]] * s
			}
		}
	}
}
