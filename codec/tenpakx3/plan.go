package tenpakx3

import (
	"fmt"
	"math"
	"sync"

	"github.com/tpconvert/tpconvert/codec"
)

// Codec implements codec.Planner and codec.SizeEstimator: rate control
// chooses a step exponent per tensor from sizes estimated on sampled rows.
var (
	_ codec.Planner        = (*Codec)(nil)
	_ codec.SizeEstimator  = (*Codec)(nil)
	_ codec.JointEstimator = (*Codec)(nil)
	_ codec.RowDecoder     = (*Codec)(nil)
	_ codec.ErrorBounder   = (*Codec)(nil)
)

// Candidates returns the Configs considered for every matrix: every k
// from −8 to 64 (about 0.8 to 10 bits per Gaussian weight, the step 2^(1/8)
// apart; estimate rounds the sample for 16 of them).
func Candidates() []Config {
	var out []Config
	for k := -8; k <= 64; k++ {
		out = append(out, Config{K: k})
	}
	return out
}

// Candidates implements codec.Planner (see the function Candidates).
func (c *Codec) Candidates(rows, cols int) []codec.Config {
	return codec.AsConfigs(Candidates())
}

// configs converts the Configs rate control hands back.
func configs(cfgs []codec.Config) ([]Config, error) {
	out, err := codec.ConfigsOf[Config]("tenpak_x_v3", cfgs)
	if err != nil {
		return nil, err
	}
	for _, v := range out {
		if err := v.Valid(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// sampled checks the Configs and a sample of whole rows x, and runs its
// first pass: the Configs, the sample's rows, imp (nil unless it has cols
// values) and the first pass.
func (c *Codec) sampled(x []float32, cols int, imp []float32, cfgs []codec.Config) ([]Config, int, []float32, *prep, error) {
	cs, err := configs(cfgs)
	if err != nil {
		return nil, 0, nil, nil, err
	}
	if cols <= 0 || len(x) == 0 || len(x)%cols != 0 {
		return nil, 0, nil, nil, fmt.Errorf("tenpak_x_v3: sample of %d values is not whole rows of %d", len(x), cols)
	}
	if err := CheckFinite(x); err != nil {
		return nil, 0, nil, nil, err
	}
	if len(imp) != cols {
		imp = nil
	}
	n := len(x) / cols
	return cs, n, imp, prepare(x, n, cols, colExps(imp), c.ncls, 1), nil
}

// Distortions implements codec.Planner: it rounds the sample rows as
// Encode rounds a tensor of those rows (step from their scale, their
// classes, column steps from imp, the centroids Encode would write) and
// returns, for each Config, Σ imp[c]·(x − x̂)² with x̂ the values Decode
// would give (TestRoundTrip checks it against a decode).
func (c *Codec) Distortions(x []float32, cols int, imp []float32, cfgs []codec.Config) ([]float64, error) {
	_, d, err := c.estimate(x, 0, cols, imp, cfgs, false)
	return d, err
}

// distortion returns Σ imp[c]·(x − x̂)² of the sample x rounded as s,
// rootImp holding √imp[c] (nil: every imp[c] is 1).
func distortion(x []float32, cols int, rootImp []float64, p *params, s *sampled) float64 {
	// The decoder's values, from the centroids Encode would write.
	rc := newRecon(s.bins.thetas())
	stepc := p.stepc[:cols]
	var e float64
	for r0 := 0; r0 < len(x); r0 += cols {
		xr, mags, neg := x[r0:r0+cols], s.mags[r0:r0+cols], s.neg[r0:r0+cols]
		for c, v := range xr {
			var y float32
			if mags[c] > 0 {
				y = rc.value(mags[c], neg[c], stepc[c])
			}
			d := float64(v) - float64(y)
			if rootImp != nil {
				d *= rootImp[c]
			}
			e += d * d
		}
	}
	return e
}

// ConfigSize implements codec.Planner: an upper bound of the payload size
// of a rows×cols matrix (raw blocks, one escape in 64 weights); rate
// control takes the sizes of EstimateSizes instead.
func (c *Codec) ConfigSize(cfg codec.Config, rows, cols int) (int64, error) {
	if _, err := configs([]codec.Config{cfg}); err != nil {
		return 0, err
	}
	n := int64(rows) * int64(cols)
	return fixedSize(rows, cols, true, c.ncls) + n*(1+MaxShift/8) + n/8 + 64, nil
}

// fixedSize returns the bytes of a rows×cols payload that do not depend on
// the values: header, column exponents, class ids, group lengths.
func fixedSize(rows, cols int, jcol bool, ncls [2]int) int64 {
	s := int64(HeaderSize)
	if jcol {
		s += int64(cols)
	}
	if min(ncls[0], rows) > 1 {
		s += int64(rows+3) / 4
	}
	if min(ncls[1], cols) > 1 {
		s += int64(cols+3) / 4
	}
	rpg := groupRows(cols)
	return s + 4*int64((rows+rpg-1)/rpg)
}

// Estimate error margins: the ideal code length of each context's sample
// histogram (with the Miller–Madow correction) times fseFactor, plus
// tableBytes per present symbol and block (FSE's normalized counts),
// measured by TestEstimateSizes.
const (
	fseFactor  = 1.01
	tableBase  = 8
	tableBytes = 1.3
)

// EstimateSizes implements codec.SizeEstimator: for each Config, the
// payload size of the whole rows×cols matrix estimated from the sample
// rows x: the sample's symbol histograms per context scaled to rows rows,
// coded at their entropy, plus the tables of each row group's blocks, the
// escapes, the raw bits and the fixed parts. It errs high by about 0.5 %.
func (c *Codec) EstimateSizes(x []float32, rows, cols int, imp []float32, cfgs []codec.Config) ([]int64, error) {
	sz, _, err := c.estimate(x, rows, cols, imp, cfgs, true)
	return sz, err
}

// Estimate implements codec.JointEstimator: the sizes of EstimateSizes
// and the distortions of Distortions, from one rounding of the sample
// per Config, as Encode would round the sample's rows in a matrix of rows
// rows (its contexts chosen for that matrix).
func (c *Codec) Estimate(x []float32, rows, cols int, imp []float32, cfgs []codec.Config) ([]int64, []float64, error) {
	return c.estimate(x, rows, cols, imp, cfgs, true)
}

// estimate rounds the sample x for each of cfgs as in a matrix of rows
// rows (rows 0: the sample alone) and returns the distortions and, when
// sizes is set, the estimated payload sizes.
func (c *Codec) estimate(x []float32, rows, cols int, imp []float32, cfgs []codec.Config, sizes bool) ([]int64, []float64, error) {
	cs, n, imp, pr, err := c.sampled(x, cols, imp, cfgs)
	if err != nil {
		return nil, nil, err
	}
	if rows <= 0 {
		rows = n
	}
	jcol := pr.jcol
	scale := float64(rows) / float64(n)
	rpg := groupRows(cols)
	ng := (rows + rpg - 1) / rpg
	var out []int64
	if sizes {
		out = make([]int64, len(cs))
	}
	dist := make([]float64, len(cs))
	var ccA, ccB []uint8
	if sizes && pr.ccls != nil && n >= 2 {
		ccA = classes(colSums(x[n/2*cols:], cols, jcol), pr.ncc)
		ccB = classes(colSums(x[:n/2*cols], cols, jcol), pr.ncc)
	}
	anchor := anchors(cs)
	var s *sampled
	var rootImp []float64
	if imp != nil {
		rootImp = make([]float64, cols)
		for c, v := range imp {
			rootImp[c] = math.Sqrt(float64(v))
		}
	}
	for i, cfg := range cs {
		if !anchor[i] {
			continue
		}
		p, ok := analyze(rowsOf(x, cols), pr, rows, cfg.K, 1, 1, 1)
		if !ok {
			return nil, nil, fmt.Errorf("%w: the step of k=%d is not a normal float32", codec.ErrUnsupported, cfg.K)
		}
		var hs *sampleHists
		if sizes {
			hs = &sampleHists{}
			if p.ccls != nil && ccA != nil {
				hs.ccA, hs.ccB = ccA, ccB
			}
		}
		s = p.roundSample(x, s, hs)
		if s.tooLarge {
			return nil, nil, fmt.Errorf("%w: a weight is more than 2^40 steps from zero", codec.ErrUnsupported)
		}
		dist[i] = distortion(x, cols, rootImp, p, s)
		if !sizes {
			continue
		}
		bits := estBits(hs.h, scale, ng)
		if hs.h2 != nil {
			// Column classes drawn from the sample fit its noise, which
			// makes its own histograms optimistic; classes of each half
			// taken from the other half make them pessimistic. The
			// estimate weights them 0.6 and 0.4 (on MiniLM's matrices
			// that lands within 0.5 % above the payload sizes).
			bits = 0.4*estBits(hs.h2, scale, ng) + 0.6*bits
		}
		esc := float64(s.esc) * scale
		low := float64(s.low) * scale
		out[i] = fixedSize(rows, cols, jcol != nil, c.ncls) + int64(math.Ceil(bits/8+esc+low)) + int64(ng)*6
	}
	interpolate(cs, anchor, out, dist)
	return out, dist, nil
}

// anchors marks the Configs estimate rounds the sample for: every one when
// there are few or they are not in increasing k, else every even k ≤ 8
// (the low rates, where size and distortion bend most), every eighth k
// above (one bit per weight apart), the first and the last. The others are interpolated
// between their neighbours: in k, size is close to linear and the
// logarithm of the distortion too (a step 2^(1/8) finer per unit of k;
// TestInterpolatedEstimates measures the error).
func anchors(cs []Config) []bool {
	a := make([]bool, len(cs))
	inc := len(cs) >= 8
	for i := 1; i < len(cs) && inc; i++ {
		inc = cs[i].K > cs[i-1].K
	}
	for i, c := range cs {
		a[i] = !inc || i == 0 || i == len(cs)-1 || c.K <= 8 && c.K%2 == 0 || c.K%8 == 0
	}
	return a
}

// interpolate fills the sizes (when present) and distortions of the
// Configs that are not anchors from the anchors on either side.
func interpolate(cs []Config, anchor []bool, sizes []int64, dist []float64) {
	lo := -1
	for i := range cs {
		if anchor[i] {
			lo = i
			continue
		}
		hi := i + 1
		for !anchor[hi] {
			hi++
		}
		f := float64(cs[i].K-cs[lo].K) / float64(cs[hi].K-cs[lo].K)
		if sizes != nil {
			sizes[i] = int64(math.Ceil(float64(sizes[lo]) + f*float64(sizes[hi]-sizes[lo])))
		}
		if a, b := dist[lo], dist[hi]; a > 0 && b > 0 {
			dist[i] = math.Exp(math.Log(a) + f*(math.Log(b)-math.Log(a)))
		} else {
			dist[i] = a + f*(b-a)
		}
	}
}

// Planned implements codec.Planner: a copy of c (workers) that codes each
// tensor named in p.Configs with its Config, with column steps from
// p.Importance, and caps each payload at p.Bytes[name] when present.
func (c *Codec) Planned(p codec.Plan) (codec.Codec, error) {
	plan, err := codec.PlanConfigs[Config]("tenpak_x_v3", p)
	if err != nil {
		return nil, err
	}
	cc := *c
	cc.plan, cc.imp, cc.bytes, cc.summary = plan, p.Importance, p.Bytes, p.Summary
	cc.used = new(sync.Map)
	return &cc, nil
}

// colSums returns Σ (x/2^(j/16))² per column of the rows x.
func colSums(x []float32, cols int, jcol []int8) []float64 {
	s := make([]float64, cols)
	for i, v := range x {
		c := i % cols
		t := float64(v)
		if jcol != nil {
			t /= colStep(jcol[c])
		}
		s[c] += t * t
	}
	return s
}

// estBits returns the estimated FSE bits of the symbol histograms h of a
// sample (per context) scaled by scale, in ng row groups.
func estBits(h [][]float64, scale float64, ng int) float64 {
	var bits float64
	for _, hk := range h {
		present := 0
		for i := range hk {
			if hk[i] > 0 {
				present++
			}
			hk[i] *= scale
		}
		// Miller–Madow: the plug-in entropy of a sample is short by
		// about (present−1)/(2·ln 2) bits in all.
		if present > 1 {
			bits += float64(present-1) / (2 * math.Ln2) * scale
		}
		bits += blockBits(hk, ng)
	}
	return bits * fseFactor
}
