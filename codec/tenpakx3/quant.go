package tenpakx3

import (
	"encoding/binary"
	"math"
	"sort"

	"github.com/tpconvert/tpconvert/codec/internal/par"
)

// Quantizer constants (part of the encoder, not of the format, except
// where CODECS.md says so).
const (
	// NTheta is the number of centroid offsets θ_1..θ_NTheta; magnitudes
	// above NTheta use θ_NTheta.
	NTheta = 8
	// escSym is the symbol that announces an escape.
	escSym = 255
	// maxCtx bounds the contexts of a payload (4 row × 4 column classes).
	maxCtx = MaxClasses * MaxClasses
)

// Lambda is the rate–distortion multiplier c of λ = c·Δ²: the rounding
// minimises (t − r(m))² + c·bits(m) in units of the step.
var Lambda = 0.14

// Classes is the largest number of row classes and of column classes
// (contexts) the encoder uses, at most MaxClasses each.
var Classes = [2]int{4, 4}

// params is everything a tensor's coding depends on besides its values.
type params struct {
	rows, cols int
	step       float32 // Δ
	scale      float32 // S: Δ = S·2^(−k/8)·f
	jcol       []int8  // per-column step exponents (nil: all 0)
	inv        []float32
	stepc      []float32 // Δ·2^(j/16) per column
	nrc, ncc   int
	rcls, ccls []uint8
	shift      uint
	theta      [NTheta]int8
	// RDO tables: reconstruction levels used by the rounding, and the
	// bits of each symbol per context.
	r1    [NTheta + 1]float32
	bits  [][256]float32
	cost  [][256]float64
	cost0 []float64
	lam   float32
	// The rounding's tables for magnitudes below roundTab: lev[m] =
	// level(m), and per context ctab[k][m] = cost[k][sym(m)] (m ≥ 1) and
	// ctab[k][0] = cost0[k].
	lev  *[roundTab]float64
	ctab []roundCosts
}

// roundTab is the number of magnitudes round takes from tables; larger
// ones are computed.
const roundTab = 512

type roundCosts [roundTab]float64

// colMul returns the step exponents j_c = round(−8·log2(imp_c/ḡ))
// (geometric mean ḡ of imp), clamped to int8, for the importance imp.
func colExps(imp []float32) []int8 {
	if imp == nil {
		return nil
	}
	var lg float64
	n := 0
	for _, v := range imp {
		if v > 0 && !math.IsInf(float64(v), 0) {
			lg += math.Log2(float64(v))
			n++
		}
	}
	if n == 0 {
		return nil
	}
	g := lg / float64(n)
	j := make([]int8, len(imp))
	allZero := true
	for c, v := range imp {
		e := 127.0
		if v > 0 && !math.IsInf(float64(v), 0) {
			// Δ_c ∝ imp_c^(−1/2): 16·log2(Δ_c/Δ) = −8·log2(imp_c/ḡ).
			e = math.Round(-8 * (math.Log2(float64(v)) - g))
		} else if v > 0 {
			e = -127
		}
		e = math.Max(-127, math.Min(127, e))
		j[c] = int8(e)
		allZero = allZero && j[c] == 0
	}
	if allZero {
		return nil
	}
	return j
}

// colStep returns 2^(j/16).
func colStep(j int8) float64 { return math.Exp2(float64(j) / 16) }

// stats are the sums of the first pass.
type stats struct {
	sumsq   float64   // Σ x²
	sumabs  float64   // Σ |x|
	rowT    []float64 // per row Σ (x/mul)²
	colT    []float64 // per column Σ (x/mul)²
	sumT    float64
	nonfine bool
}

// firstPass computes the sums of squares the step and the classes
// depend on, in chunks of rows whose partial sums are added in order.
func firstPass(x []float32, rows, cols int, jcol []int8, workers int) stats {
	a := newFirstAcc(rows, cols, jcol)
	a.add(x, 0, rows, workers)
	return a.st
}

// firstAcc is the first pass over rows given a window at a time, in
// order: the partial sums of each chunk of max(1, 2^16/cols) rows are
// added in chunk order, a chunk split by a window's end carried into the
// next, so that the sums do not depend on the windows or the workers.
type firstAcc struct {
	cols, chunk int
	mulInv      []float64
	st          stats
	carry       *stats // the partial sums of the chunk the last window ended in
}

func newFirstAcc(rows, cols int, jcol []int8) *firstAcc {
	a := &firstAcc{cols: cols, chunk: max(1, (1<<16)/cols), mulInv: make([]float64, cols),
		st: stats{rowT: make([]float64, rows), colT: make([]float64, cols)}}
	for c := range a.mulInv {
		a.mulInv[c] = 1
		if jcol != nil {
			a.mulInv[c] = 1 / colStep(jcol[c])
		}
	}
	return a
}

// firstBatch caps the memory of the chunks' column sums in flight.
const firstBatch = 1 << 20

// add takes rows [w0, w1) of the matrix (of rows rows in all), whose
// values are x; windows come in order and cover the rows.
func (a *firstAcc) add(x []float32, w0, w1, workers int) {
	cols, chunk, rows := a.cols, a.chunk, len(a.st.rowT)
	c0, c1 := w0/chunk, (w1-1)/chunk+1
	batch := max(workers, firstBatch/(8*cols))
	for b0 := c0; b0 < c1; b0 += batch {
		b1 := min(c1, b0+batch)
		parts := make([]stats, b1-b0)
		if b0 == c0 && a.carry != nil {
			parts[0], a.carry = *a.carry, nil
		}
		_ = par.For(b1-b0, 1, 1, workers, func(j0, j1 int) error {
			for j := j0; j < j1; j++ {
				ch, p := b0+j, &parts[j]
				if p.colT == nil {
					p.colT = make([]float64, cols)
				}
				for r := max(w0, ch*chunk); r < min(w1, (ch+1)*chunk); r++ {
					var rs float64
					for c, v := range x[(r-w0)*cols : (r-w0+1)*cols] {
						f := float64(v)
						p.sumsq += f * f
						p.sumabs += math.Abs(f)
						t := f * a.mulInv[c]
						t *= t
						rs += t
						p.colT[c] += t
					}
					p.sumT += rs
				}
			}
			return nil
		})
		for j := range parts {
			p := &parts[j]
			if ch := b0 + j; ch == c1-1 && w1 < min(rows, (ch+1)*chunk) {
				a.carry = p
				break
			}
			a.st.sumsq += p.sumsq
			a.st.sumabs += p.sumabs
			a.st.sumT += p.sumT
			for c := range cols {
				a.st.colT[c] += p.colT[c]
			}
		}
	}
	// Row sums again (cheap, and independent of the chunking).
	_ = par.For(w1-w0, 1, max(1, (1<<16)/cols), workers, func(r0, r1 int) error {
		for r := r0; r < r1; r++ {
			var rs float64
			for c, v := range x[r*cols : (r+1)*cols] {
				t := float64(v) * a.mulInv[c]
				rs += t * t
			}
			a.st.rowT[w0+r] = rs
		}
		return nil
	})
}

// classes assigns n items with sums of squares ss to nc classes of equal
// count by rank (ties by index): class = rank·nc/n.
func classes(ss []float64, nc int) []uint8 {
	if nc <= 1 {
		return nil
	}
	idx := make([]int, len(ss))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return ss[idx[a]] < ss[idx[b]] })
	out := make([]uint8, len(ss))
	for rank, i := range idx {
		out[i] = uint8(rank * nc / len(ss))
	}
	return out
}

// Alphabet is the magnitude the encoder keeps below 2^s·Alphabet for
// values up to 6.5 RMS (s the raw low bits of each magnitude): larger
// alphabets cost more table than they save.
var Alphabet = 100.0

// shiftFor returns the number of raw low bits s for a normalized RMS
// rmsT = RMS(x/Δ_c): the smallest s with 6.5·rmsT < Alphabet·2^s, so
// that values up to about 6.5 RMS take no escape.
func shiftFor(rmsT float64) uint {
	s := uint(0)
	for s < MaxShift && 6.5*rmsT >= Alphabet*math.Exp2(float64(s)) {
		s++
	}
	return s
}

// prep is what a tensor's coding takes from its values whatever the
// step: the first pass's sums and the classes.
type prep struct {
	rows, cols int
	jcol       []int8
	st         stats
	nrc, ncc   int
	rcls, ccls []uint8
}

// prepare runs the first pass over x (rows×cols) and ranks its rows and
// columns into at most ncls classes.
func prepare(x []float32, rows, cols int, jcol []int8, ncls [2]int, workers int) *prep {
	return prepared(firstPass(x, rows, cols, jcol, workers), rows, cols, jcol, ncls)
}

// prepared ranks the rows and columns of the first pass st.
func prepared(st stats, rows, cols int, jcol []int8, ncls [2]int) *prep {
	pr := &prep{rows: rows, cols: cols, jcol: jcol, st: st}
	pr.nrc, pr.ncc = max(1, min(ncls[0], rows)), max(1, min(ncls[1], cols))
	pr.rcls = classes(pr.st.rowT, pr.nrc)
	pr.ccls = classes(pr.st.colT, pr.ncc)
	return pr
}

// analyze computes a tensor's params for step exponent k and step factor
// f (1 unless the size cap coarsens it) from its first pass pr: step, raw
// bits, then a plain rounding pass whose histogram and centroids drive
// the rate–distortion optimised rounding. ok is false when the step is
// not a positive normal float32.
//
// The contexts are chosen as for a tensor of fullRows rows (≥ rows): the
// histograms scaled by fullRows/rows against the tables of its row
// groups, so that a sample picks the contexts of its whole tensor.
func analyze(row func(r int) []float32, pr *prep, fullRows, k int, f float64, stride, workers int) (*params, bool) {
	st := &pr.st
	rows, cols := pr.rows, pr.cols
	n := float64(rows) * float64(cols)
	// The scale is the mean magnitude times sqrt(π/2) (the RMS of
	// Gaussian weights): unlike the RMS it is not dominated by a few
	// outlier rows, so that a sample of rows gives the same step.
	rms := st.sumabs / n * math.Sqrt(math.Pi/2)
	rmsT := math.Sqrt(st.sumT / n)
	step := rms * math.Exp2(-float64(k)/8) * f
	if rms == 0 {
		step = 1
	}
	p := &params{rows: rows, cols: cols, step: float32(step), scale: float32(rms), jcol: pr.jcol, lam: float32(Lambda)}
	if !(p.step >= math.SmallestNonzeroFloat32*(1<<23)) || math.IsInf(float64(p.step), 0) {
		return nil, false
	}
	p.nrc, p.ncc, p.rcls, p.ccls = pr.nrc, pr.ncc, pr.rcls, pr.ccls
	p.setSteps()
	if rmsT > 0 {
		p.shift = shiftFor(rmsT / float64(p.step))
	}
	rpg := groupRows(cols)
	p.plainPass(row, float64(fullRows)/float64(rows)*float64(stride), (fullRows+rpg-1)/rpg, stride, workers)
	return p, true
}

// statStride returns the stride of the rows a whole rows×cols matrix's
// first pass rounds: every stride-th row, at least 2^18 weights in all.
func statStride(rows, cols int) int { return max(1, rows*cols/(1<<18)) }

// setSteps fills the per-column steps from step and jcol.
func (p *params) setSteps() {
	p.stepc = make([]float32, p.cols)
	p.inv = make([]float32, p.cols)
	for c := range p.cols {
		s := float64(p.step)
		if p.jcol != nil {
			s *= colStep(p.jcol[c])
		}
		p.stepc[c] = float32(s)
		p.inv[c] = float32(1 / s)
	}
}

func (p *params) ctx(r, c int) int { return p.ctxOf(p.rowBase(r), c) }

// rowBase returns the first context of row r's class.
func (p *params) rowBase(r int) int {
	if p.rcls != nil {
		return int(p.rcls[r]) * p.ncc
	}
	return 0
}

// ctxOf returns the context of column c in a row whose first context is
// base (rowBase).
func (p *params) ctxOf(base, c int) int {
	if p.ccls != nil {
		return base + int(p.ccls[c])
	}
	return base
}

// binSums accumulates, per magnitude bin b = min(m, NTheta) (b ≥ 1), Σ w
// and Σ w·(m − t), whose ratio is the centroid offset θ_b.
type binSums struct {
	w, d [NTheta + 1]float64
}

func (b *binSums) add(o *binSums) {
	for i := range b.w {
		b.w[i] += o.w[i]
		b.d[i] += o.d[i]
	}
}

// thetas returns θ_b = round(256·Σw(m−t)/Σw) clamped to int8 (0 for an
// empty bin).
func (b *binSums) thetas() [NTheta]int8 {
	var th [NTheta]int8
	for i := 1; i <= NTheta; i++ {
		if b.w[i] > 0 {
			v := math.Round(256 * b.d[i] / b.w[i])
			th[i-1] = int8(math.Max(-127, math.Min(127, v)))
		}
	}
	return th
}

// rowsOf returns the accessor of the rows of the matrix x of cols columns.
func rowsOf(x []float32, cols int) func(r int) []float32 {
	return func(r int) []float32 { return x[r*cols : (r+1)*cols] }
}

// plainPass rounds every value of every stride-th row (row(r)) to the nearest
// level, builds each context's symbol histogram (the bits of the optimised
// rounding) and the centroids of the plain rounding (its reconstruction
// levels).
func (p *params) plainPass(row func(r int) []float32, scale float64, ng, stride, workers int) {
	nctx := p.nrc * p.ncc
	chunk := max(1, (1<<16)/p.cols)
	nch := (p.rows + chunk - 1) / chunk
	hs := make([][]uint32, nch)
	bs := make([]binSums, nch)
	ccls := p.ccls
	_ = par.For(p.rows, chunk, chunk, workers, func(r0, r1 int) error {
		for ch := r0 / chunk; ch*chunk < r1; ch++ {
			h := make([]uint32, nctx*256)
			b := &bs[ch]
			for r := ch * chunk; r < min(r1, (ch+1)*chunk); r++ {
				if r%stride != 0 {
					continue
				}
				base := p.rowBase(r)
				x := row(r)
				inv := p.inv[:len(x)]
				for c, v := range x {
					t := math.Abs(float64(v) * float64(inv[c]))
					m, sym := math.Round(t), escSym
					if m < 1<<40 {
						sym = p.sym(int64(m))
					}
					k := base
					if ccls != nil {
						k += int(ccls[c])
					}
					h[k*256+sym]++
					if m > 0 {
						i := bin(m)
						b.w[i]++
						b.d[i] += m - t
					}
				}
			}
			hs[ch] = h
		}
		return nil
	})
	tot := make([]uint64, nctx*256)
	var b binSums
	for ch := range nch {
		for i, v := range hs[ch] {
			tot[i] += uint64(v)
		}
		b.add(&bs[ch])
	}
	th := b.thetas()
	for m := 1; m <= NTheta; m++ {
		p.r1[m] = float32(m) - float32(th[m-1])/256
	}
	// Keep the row and column classes only where they pay for their
	// tables: of nrc×ncc, nrc×1, 1×ncc and 1×1 contexts, the one whose
	// histograms cost the fewest bits.
	bestBits, bestR, bestC := math.Inf(1), 1, 1
	var bestH []float64
	for _, rc := range [][2]int{{p.nrc, p.ncc}, {p.nrc, 1}, {1, p.ncc}, {1, 1}} {
		h := make([]float64, rc[0]*rc[1]*256)
		for a := range p.nrc {
			for b := range p.ncc {
				k := (a%rc[0])*rc[1] + b%rc[1]
				if rc[0] == 1 {
					k = b % rc[1]
				}
				if rc[1] == 1 {
					k = a % rc[0]
				}
				for s := range 256 {
					h[k*256+s] += scale * float64(tot[(a*p.ncc+b)*256+s])
				}
			}
		}
		var bits float64
		for k := range rc[0] * rc[1] {
			bits += blockBits(h[k*256:(k+1)*256], ng)
		}
		if bits < bestBits-0.5 {
			bestBits, bestR, bestC, bestH = bits, rc[0], rc[1], h
		}
	}
	if bestR == 1 {
		p.rcls = nil
	}
	if bestC == 1 {
		p.ccls = nil
	}
	p.nrc, p.ncc = bestR, bestC
	nctx = bestR * bestC
	p.bits = make([][256]float32, nctx)
	for k := range nctx {
		var n float64
		for s := range 256 {
			n += bestH[k*256+s]
		}
		for s := range 256 {
			// Add-one-half smoothing: an unseen symbol costs a bit more
			// than the rarest seen one.
			p.bits[k][s] = float32(math.Log2((n + 128) / (bestH[k*256+s] + 0.5)))
		}
		// An escape also sends its value, about a byte.
		p.bits[k][escSym] += 8
	}
	p.setCosts()
}

// fseLog is the FSE table log the encoder asks for.
const fseLog = 12

// blockBits estimates the bits of ng FSE blocks whose symbols have the
// histogram h in all: the code length under FSE's normalized counts
// (each present symbol at least 1 of 2^fseLog) and each block's table.
func blockBits(h []float64, ng int) float64 {
	var tot, qs float64
	present := 0
	for _, v := range h {
		tot += v
		if v > 0 {
			present++
		}
	}
	if tot == 0 {
		return 0
	}
	if present == 1 {
		return 16 * float64(ng)
	}
	const T = 1 << fseLog
	q := make([]float64, len(h))
	for i, v := range h {
		if v > 0 {
			q[i] = math.Max(1, math.Round(v*T/tot))
			qs += q[i]
		}
	}
	var bits float64
	for i, v := range h {
		if v > 0 {
			bits -= v * math.Log2(q[i]/qs)
		}
	}
	return bits + 8*float64(ng)*(tableBase+tableBytes*float64(present))
}

// level returns the RDO reconstruction level of magnitude m.
func (p *params) level(m float64) float64 {
	if m <= NTheta {
		return float64(p.r1[int(m)])
	}
	return m - float64(NTheta) + float64(p.r1[NTheta])
}

// setCosts fills the rounding's rate terms c·bits per context and
// symbol (the sign included for m > 0).
func (p *params) setCosts() {
	p.cost = make([][256]float64, len(p.bits))
	lam := float64(p.lam)
	for k := range p.bits {
		for s := range 256 {
			p.cost[k][s] = lam * (float64(p.bits[k][s]) + 1)
		}
		p.cost0 = append(p.cost0, lam*float64(p.bits[k][0]))
	}
	p.lev = new([roundTab]float64)
	for m := 1; m < roundTab; m++ {
		p.lev[m] = p.level(float64(m))
	}
	p.ctab = make([]roundCosts, len(p.bits))
	for k := range p.ctab {
		ct := &p.ctab[k]
		ct[0] = p.cost0[k]
		for m := 1; m < roundTab; m++ {
			ct[m] = p.cost[k][p.sym(int64(m))]
		}
	}
}

// sym returns the symbol of magnitude m: min(m >> s, 255).
func (p *params) sym(m int64) int {
	return int(min(m>>p.shift, escSym))
}

// round returns the magnitude m chosen for normalized value t ≥ 0 in
// context k: of ⌊t⌋, ⌊t⌋+1 and 0, the one with the least
// (t − level(m))² + c·bits, bits counting the symbol (plus 8 for an
// escape) and the sign; the raw low bits, the same for every choice, are
// left out. Below roundTab−1 the levels and costs come from p's tables
// (the same float64 values), above from roundLarge.
func (p *params) round(t float64, k int) float64 {
	if !(t < roundTab-1) {
		return p.roundLarge(t, k)
	}
	mi := int(t) & (roundTab - 1) // ⌊t⌋, t ≥ 0 (the masks only drop bounds checks)
	mj := (mi + 1) & (roundTab - 1)
	ct := &p.ctab[k]
	z := t*t + ct[0]
	// For ⌊t⌋ = 0, c0 is z itself (lev[0] = 0, ctab[k][0] = cost0[k]):
	// the comparisons below keep 0 then, as round's order of choices
	// does.
	d0 := t - p.lev[mi]
	c0 := d0*d0 + ct[mi]
	d1 := t - p.lev[mj]
	c1 := d1*d1 + ct[mj]
	best := 0
	if c0 < z {
		best = mi
	}
	if c1 < min(c0, z) {
		best = mj
	}
	return float64(best)
}

// roundLarge is round for t ≥ roundTab−1 (and NaN).
func (p *params) roundLarge(t float64, k int) float64 {
	if t > 1<<40 {
		return math.Round(t)
	}
	lo := math.Floor(t)
	mi := int64(lo)
	cost := &p.cost[k]
	best, bestCost := 0.0, t*t+p.cost0[k]
	if mi > 0 {
		d := t - p.level(lo)
		if c := d*d + cost[p.sym(mi)]; c < bestCost {
			best, bestCost = lo, c
		}
	}
	d := t - p.level(lo+1)
	if c := d*d + cost[p.sym(mi+1)]; c < bestCost {
		best = lo + 1
	}
	return best
}

// recon is the decoder's reconstruction table: level(m) for m ≤ NTheta
// from the stored θ.
type recon [NTheta + 1]float64

func newRecon(th [NTheta]int8) recon {
	var r recon
	for m := 1; m <= NTheta; m++ {
		r[m] = float64(m) - float64(th[m-1])/256
	}
	return r
}

// value returns the decoded weight of magnitude m, sign neg, column step
// sc: float32(±(m − θ)·sc).
func (r *recon) value(m uint64, neg bool, sc float32) float32 {
	var l float64
	if m <= NTheta {
		l = r[m]
	} else {
		l = float64(m-NTheta) + r[NTheta]
	}
	v := float32(l * float64(sc))
	if neg {
		v = -v
	}
	return v
}

// offsets returns θ_b/256 per bin b ≥ 1: the level of magnitude m ≥ 1 is
// m − offsets[min(m, NTheta)], exactly value's (both are exact in float64
// for m ≤ 2^40).
func (r *recon) offsets() [NTheta + 1]float64 {
	var o [NTheta + 1]float64
	for b := 1; b <= NTheta; b++ {
		o[b] = float64(b) - r[b]
	}
	return o
}

// bin returns the centroid bin of magnitude m ≥ 1: min(m, NTheta).
func bin(m float64) int {
	if m >= NTheta {
		return NTheta
	}
	return int(m)
}

// sampled is the rounding of a sample: per weight (row-major) its
// magnitude, and the bytes its escapes and raw bits take.
type sampled struct {
	mags     []uint64
	neg      []bool
	esc, low int
	bins     binSums
	tooLarge bool
}

// roundSample rounds every weight of x (p.rows rows) as quantGroup does,
// keeping the magnitudes instead of coding them; into, when not nil, is a
// sampled of as many weights whose slices it reuses. With hs, it also
// counts each weight's symbol in its context's histogram h (hs.h) and,
// with column classes hs.ccA (rows below half) and hs.ccB, in hs.h2.
func (p *params) roundSample(x []float32, into *sampled, hs *sampleHists) *sampled {
	s := into
	if s == nil || len(s.mags) != len(x) {
		s = &sampled{mags: make([]uint64, len(x)), neg: make([]bool, len(x))}
	} else {
		*s = sampled{mags: s.mags, neg: s.neg}
	}
	var lowBits uint64
	var tmp [binary.MaxVarintLen64]byte
	cols, ccls := p.cols, p.ccls
	var cnt *[maxCtx * 256]uint32
	if hs != nil {
		cnt = new([maxCtx * 256]uint32)
	}
	for r := range p.rows {
		base := p.rowBase(r)
		xr := x[r*cols : (r+1)*cols]
		mags, neg, inv := s.mags[r*cols:(r+1)*cols], s.neg[r*cols:(r+1)*cols], p.inv[:cols]
		lowBits += uint64(p.shift) * uint64(cols)
		for c, v := range xr {
			t := math.Abs(float64(v) * float64(inv[c]))
			k := base
			if ccls != nil {
				k += int(ccls[c])
			}
			m := p.round(t, k)
			if cnt != nil {
				cnt[k*256+int(min(uint64(m)>>p.shift, escSym))]++
			}
			if m == 0 {
				mags[c], neg[c] = 0, false
				continue
			}
			if m > maxMag {
				s.tooLarge = true
				m = maxMag
			}
			mu := uint64(m)
			mags[c], neg[c] = mu, v < 0
			lowBits++
			if hi := mu >> p.shift; hi >= escSym {
				s.esc += binary.PutUvarint(tmp[:], hi-escSym)
			}
			b := bin(m)
			s.bins.w[b]++
			s.bins.d[b] += m - t
		}
	}
	s.low = int((lowBits + 7) / 8)
	if hs != nil {
		hs.h = newHist(p.nrc * p.ncc)
		for k, hk := range hs.h {
			for i := range hk {
				hk[i] = float64(cnt[k*256+i])
			}
		}
		if hs.ccA != nil {
			hs.h2 = newHist(p.nrc * p.ncc)
			p.hist(hs.h2, s, hs.ccA, 0, p.rows/2)
			p.hist(hs.h2, s, hs.ccB, p.rows/2, p.rows)
		}
	}
	return s
}

// sampleHists are the symbol histograms roundSample counts.
type sampleHists struct {
	ccA, ccB []uint8     // column classes of each half, from the other (nil: no h2)
	h, h2    [][]float64 // per context, 256 symbols
}

// hist adds to h (per context, 256 symbols) the symbols of rows [r0, r1)
// of the sample, with column classes ccls (nil: one column class) and
// p's row classes.
func (p *params) hist(h [][]float64, s *sampled, ccls []uint8, r0, r1 int) {
	for r := r0; r < r1; r++ {
		base := 0
		if p.rcls != nil {
			base = int(p.rcls[r]) * p.ncc
		}
		for c := range p.cols {
			k := base
			if ccls != nil {
				k += int(ccls[c])
			}
			h[k][min(s.mags[r*p.cols+c]>>p.shift, escSym)]++
		}
	}
}

func newHist(nctx int) [][]float64 {
	h := make([][]float64, nctx)
	for k := range h {
		h[k] = make([]float64, 256)
	}
	return h
}
