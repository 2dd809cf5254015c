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

// halfBelow returns the largest FP16 value below the finite FP16 value h.
func halfBelow(h uint16) uint16 {
	switch {
	case h == 0 || h == 0x8000:
		return 0x8001 // the negative subnormal nearest zero
	case h&0x8000 == 0:
		return h - 1
	}
	return h + 1
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
	// A group none of whose candidate scales gives a finite error (values
	// near the FP16 limit) keeps code 0 and scale 0, never the codes of
	// an earlier row or configuration.
	clear(codes)
	clear(y)
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
	try := func(s16, m16 uint16) bool {
		s, m := tensor.HalfToFloat(s16), tensor.HalfToFloat(m16)
		if s < 0 || math.IsInf(float64(s), 0) || math.IsNaN(float64(s)) || math.IsInf(float64(m), 0) || math.IsNaN(float64(m)) {
			return false
		}
		if e := q.recodeGroup(x, w, s, m, tmpc, tmpy, true); e < best {
			best, bs, bm = e, s16, m16
			copy(codes, tmpc)
			copy(y, tmpy)
		}
		return best == 0
	}
	for _, f := range clipFactors(q.cfg.Bits) {
		c, h := (mn+mx)/2, (mx-mn)/2*f
		lo, hi := mn, mx
		if f != 1 {
			lo, hi = c-h, c+h
		}
		m16 := tensor.FloatToHalf(lo)
		m := tensor.HalfToFloat(m16)
		if m > lo {
			// Rounded up past the group's minimum (0.3 becomes
			// 0.30005 in FP16): a constant group would get a negative
			// scale and be coded as zeros. Take the FP16 value below.
			m16 = halfBelow(m16)
			m = tensor.HalfToFloat(m16)
		}
		s16 := tensor.FloatToHalf((hi - m) / qmax)
		// Unclipped, the FP16 neighbours of the scale are tried too: the
		// one a checkpoint was quantized with may round differently.
		for _, ds := range neighbours(s16, f == 1) {
			if try(ds, m16) {
				return bs, bm
			}
		}
	}
	// Least-squares refinement: the scale and minimum that fit the
	// chosen codes best, then the codes that fit those.
	for range 2 {
		var sw, sk, skk, sx, skx float64
		for i, v := range x {
			wi := 1.0
			if w != nil {
				wi = float64(w[i])
			}
			k := float64(codes[i])
			sw += wi
			sk += wi * k
			skk += wi * k * k
			sx += wi * float64(v)
			skx += wi * k * float64(v)
		}
		det := sw*skk - sk*sk
		if !(det > 0) {
			break
		}
		sNew := (sw*skx - sk*sx) / det
		mNew := (skk*sx - sk*skx) / det
		if !(sNew > 0) || try(tensor.FloatToHalf(float32(sNew)), tensor.FloatToHalf(float32(mNew))) {
			break
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
	try := func(s16 uint16) bool {
		s := tensor.HalfToFloat(s16)
		if s < 0 || math.IsInf(float64(s), 0) || math.IsNaN(float64(s)) {
			return false
		}
		if e := q.recodeGroup(x, w, s, 0, tmpc, tmpy, true); e < best {
			best, bs = e, s16
			copy(codes, tmpc)
			copy(y, tmpy)
		}
		return best == 0
	}
	for _, f := range clipFactors(q.cfg.Bits) {
		for _, s16 := range neighbours(tensor.FloatToHalf(amax*f/qmax), f == 1) {
			if try(s16) {
				return bs
			}
		}
	}
	for range 2 { // least-squares scale for the chosen codes
		var num, den float64
		for i, v := range x {
			wi := 1.0
			if w != nil {
				wi = float64(w[i])
			}
			k := float64(codes[i]) - float64(qmax)
			num += wi * k * float64(v)
			den += wi * k * k
		}
		if !(den > 0) || try(tensor.FloatToHalf(float32(num/den))) {
			break
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
		if s < 0 || math.IsInf(float64(s), 0) || math.IsNaN(float64(s)) {
			return
		}
		if e := q.recodeGroup(x, nil, s, 0, tmpc, tmpy, true); e < best {
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

// bracket returns the byte codes just below and above v (one if v is a
// whole number), clamped to [0, hi].
func bracket(v float64, hi float64) []uint8 {
	lo, up := min(max(math.Floor(v), 0), hi), min(max(math.Ceil(v), 0), hi)
	if lo == up {
		return []uint8{uint8(lo)}
	}
	return []uint8{uint8(lo), uint8(up)}
}

// recodeGroup codes x with scale sh (and minimum m) and returns the
// squared error, each weight's weighted by w when w is not nil; codes and
// y are written only if write is set.
func (q *quantizer) recodeGroup(x, w []float32, sh, m float32, codes []uint8, y []float32, write bool) float64 {
	var e float64
	qmax := float32(int(1)<<q.cfg.Bits - 1)
	sqmax := float32(int(1)<<(q.cfg.Bits-1) - 1)
	for i, v := range x {
		var c, r float32
		switch q.cfg.Grid {
		case GridUniform:
			if sh > 0 {
				c = float32(math.Round(float64((v - m) / sh)))
				c = min(max(c, 0), qmax)
			}
			r = c*sh + m
		case GridSymmetric:
			if sh > 0 {
				c = float32(math.Round(float64(v / sh)))
				c = min(max(c, -sqmax), sqmax)
			}
			r = c * sh
			c += sqmax
		case GridNormal:
			k := q.nearest(0)
			if sh > 0 {
				k = q.nearest(v / sh)
			}
			c, r = float32(k), q.levels[k]*sh
		}
		d := float64(v - r)
		if w == nil {
			e += d * d
		} else {
			e += float64(w[i]) * d * d
		}
		if write {
			codes[i], y[i] = uint8(c), r
		}
	}
	return e
}

// decodeRow reconstructs one row (in the coded domain) from its codes and
// its groups' scales (and minimums) as float32.
func (q *quantizer) decodeRow(codes []uint8, scales, mins []float32, y []float32) {
	g := q.cfg.Group
	switch q.cfg.Grid {
	case GridUniform:
		for gi, lo := 0, 0; lo < len(y); gi, lo = gi+1, lo+g {
			s, m := scales[gi], mins[gi]
			for i := lo; i < min(lo+g, len(y)); i++ {
				y[i] = float32(codes[i])*s + m
			}
		}
	case GridSymmetric:
		qmax := float32(int(1)<<(q.cfg.Bits-1) - 1)
		for gi, lo := 0, 0; lo < len(y); gi, lo = gi+1, lo+g {
			s := scales[gi]
			for i := lo; i < min(lo+g, len(y)); i++ {
				y[i] = (float32(codes[i]) - qmax) * s
			}
		}
	case GridNormal:
		for gi, lo := 0, 0; lo < len(y); gi, lo = gi+1, lo+g {
			s := scales[gi]
			for i := lo; i < min(lo+g, len(y)); i++ {
				y[i] = q.levels[codes[i]] * s
			}
		}
	}
}

// 8-bit group parameters (Config.S8). Each row stores an FP16 base scale
// S (and, for GridUniform, an FP16 base M ≥ 0 for the minimums); group g
// stores one byte k_g with s_g = S·2^(−k_g/ScaleStepsPerOctave) and, for
// GridUniform, one byte j_g with m_g = M·(j_g − 127)/127.
const ScaleStepsPerOctave = 32

// s8Scale returns the scale of code k under base S.
func s8Scale(base float32, k uint8) float32 {
	return base * float32(math.Exp2(-float64(k)/ScaleStepsPerOctave))
}

// s8Min returns the minimum of code j under base M.
func s8Min(base float32, j uint8) float32 {
	return base * float32(int(j)-127) / 127
}

// roundUpHalf returns the smallest FP16 value ≥ v (v ≥ 0, finite).
func roundUpHalf(v float32) uint16 {
	h := tensor.FloatToHalf(v)
	if tensor.HalfToFloat(h) < v && h < 0x7bff {
		h++
	}
	return h
}

// requantS8 replaces a row's FP16 group parameters (from quantRow) by
// 8-bit codes under per-row FP16 bases, and recodes every group with the
// parameters a decoder will see. base gets S (and M); ks, js the group
// codes; codes and y are rewritten.
func (q *quantizer) requantS8(x []float32, scales, mins []uint16, base []uint16, ks, js []uint8, codes []uint8, y []float32) {
	var S, M float32
	for gi := range scales {
		S = max(S, tensor.HalfToFloat(scales[gi]))
		if q.cfg.Grid == GridUniform {
			M = max(M, float32(math.Abs(float64(tensor.HalfToFloat(mins[gi])))))
		}
	}
	base[0] = roundUpHalf(S)
	Sb := tensor.HalfToFloat(base[0])
	var Mb float32
	if q.cfg.Grid == GridUniform {
		base[1] = roundUpHalf(M)
		Mb = tensor.HalfToFloat(base[1])
	}
	g := q.cfg.Group
	for gi, lo := 0, 0; lo < len(x); gi, lo = gi+1, lo+g {
		hi := min(lo+g, len(x))
		s := tensor.HalfToFloat(scales[gi])
		// The codes just below and above the group's scale (and minimum)
		// are all tried: one may clip, another be coarser.
		j := 127.0
		if q.cfg.Grid == GridUniform && Mb > 0 {
			j = float64(tensor.HalfToFloat(mins[gi])/Mb)*127 + 127
		}
		k := 255.0
		if s > 0 && Sb > 0 {
			k = -ScaleStepsPerOctave * math.Log2(float64(s/Sb))
		}
		best := math.Inf(1)
		for _, jj := range bracket(j, 254) {
			for _, kk := range bracket(k, 255) {
				e := q.recodeGroup(x[lo:hi], nil, s8Scale(Sb, kk), s8Min(Mb, jj), codes[lo:hi], y[lo:hi], false)
				if e < best {
					best, ks[gi] = e, kk
					if js != nil {
						js[gi] = jj
					}
				}
			}
		}
		m := float32(0)
		if js != nil {
			m = s8Min(Mb, js[gi])
		}
		q.recodeGroup(x[lo:hi], nil, s8Scale(Sb, ks[gi]), m, codes[lo:hi], y[lo:hi], true)
	}
}
