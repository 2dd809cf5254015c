// Package rate is the rate control of codecs that plan (codec.Planner):
// given a bit budget, it chooses one of the codec's configurations for
// every selected tensor so that the sum of their payloads fits the budget
// and the estimated, importance-weighted squared error over the model is
// as small as it can make it. It knows no codec by name.
//
// For each tensor it codes a deterministic sample of whole rows with every
// candidate configuration (codec.Planner.Distortions) and scales the error
// to the whole tensor. Payload sizes are exact (codec.Planner.ConfigSize),
// or, for a planner whose sizes depend on the values
// (codec.SizeEstimator), estimated from the same sample; each tensor's
// estimate of its chosen configuration is then its allotment, which the
// planned codec does not exceed (codec.Plan.Bytes).
//
// The allocation minimises Σ_t D_t(c_t) subject to Σ_t bytes_t(c_t) ≤
// budget over the lower convex hulls of the candidates. For estimated
// sizes it is monotone: every hull segment of every tensor is ranked by
// its error reduction per byte (ties in a fixed order) and the longest
// prefix of that ranking that fits is taken, so a larger budget takes a
// longer prefix and never gives a tensor fewer bytes or more error. For
// exact sizes (tenpak_x_v2, whose hulls are coarse) a Lagrangian search is
// followed by greedy filling and pair moves, which spend the budget more
// fully but are not monotone.
package rate

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"

	"golang.org/x/sync/errgroup"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/tensor"
)

// Options configure Build.
type Options struct {
	// Workers is the number of tensors estimated at once (default 1).
	Workers int
	// SampleRows is the number of rows of each tensor the estimate codes
	// (default: enough rows for 32768 weights, between 16 and 128; all
	// rows of smaller tensors).
	SampleRows int
	// Transpose reports tensors stored [in, out], as for stream.
	Transpose func(t tensor.Info) bool
	// Progress, if set, is called after each tensor is estimated.
	Progress func(t tensor.Info)
}

// sampleSize returns the default number of sample rows for cols columns.
func sampleSize(cols int) int { return min(128, max(16, (32768+cols-1)/cols)) }

// Option is one candidate for one tensor.
type Option struct {
	Config codec.Config
	// Bytes is the payload size: exact (codec.Planner.ConfigSize), or
	// the planner's estimate (codec.SizeEstimator, Plan.Estimated).
	Bytes int64
	Dist  float64 // estimated relative weighted squared error, Σ imp·ΔW² / Σ imp·W², times the tensor's Weight
}

// Tensor is one selected tensor with its candidates and, after Allocate,
// its choice.
type Tensor struct {
	Info    tensor.Info
	Options []Option
	// Signal is Σ imp[c]·W[r,c]² estimated over the tensor (for SQNR).
	Signal float64
	// Weight is the tensor's weight in the objective (see Weights); its
	// Options' Dist already include it.
	Weight float64
	Choice int
}

// Chosen returns the chosen option.
func (t *Tensor) Chosen() Option { return t.Options[t.Choice] }

// Plan is the outcome of Build and Allocate.
type Plan struct {
	Tensors []*Tensor
	// Unsupported counts the selected tensors left out of the plan:
	// their sampled rows hold values the codec cannot represent
	// (codec.ErrUnsupported from Distortions). They are stored unchanged.
	Unsupported int
	// UnsupportedErr is the error of the first tensor left out.
	UnsupportedErr error
	Importance     map[string][]float32
	Budget         int64 // bytes for the payloads of Tensors
	// Estimated is set by Build when the planner is a
	// codec.SizeEstimator: the Options' Bytes are estimates, Allocate is
	// monotone, and Allotted gives each tensor's cap (codec.Plan.Bytes).
	Estimated bool
}

// Allotted returns the chosen payload size per tensor name: for an
// Estimated plan, the most the planned codec may write for it.
func (p *Plan) Allotted() map[string]int64 {
	m := make(map[string]int64, len(p.Tensors))
	for _, t := range p.Tensors {
		m[t.Info.Name] = t.Chosen().Bytes
	}
	return m
}

// Configs returns the chosen Config per tensor name.
func (p *Plan) Configs() map[string]codec.Config {
	m := make(map[string]codec.Config, len(p.Tensors))
	for _, t := range p.Tensors {
		m[t.Info.Name] = t.Chosen().Config
	}
	return m
}

// Bytes returns the total chosen payload size.
func (p *Plan) Bytes() int64 {
	var n int64
	for _, t := range p.Tensors {
		n += t.Chosen().Bytes
	}
	return n
}

// Longest returns the codec c plans (c built the Plan) with each tensor's
// candidate of the longest name: the record parameters of any allocation
// are at most as long as its, which bounds the file's overhead.
func (p *Plan) Longest(c codec.Planner) (codec.Codec, error) {
	m := make(map[string]codec.Config, len(p.Tensors))
	for _, t := range p.Tensors {
		best := t.Options[0].Config
		for _, o := range t.Options[1:] {
			if len(o.Config.String()) > len(best.String()) {
				best = o.Config
			}
		}
		m[t.Info.Name] = best
	}
	return c.Planned(codec.Plan{Configs: m})
}

// MinBytes returns the smallest total payload any allocation can reach.
func (p *Plan) MinBytes() int64 {
	var n int64
	for _, t := range p.Tensors {
		m := int64(math.MaxInt64)
		for _, o := range t.Options {
			m = min(m, o.Bytes)
		}
		n += m
	}
	return n
}

// Build estimates every candidate configuration of planner c for every
// tensor of src that sel selects. It decodes only the sampled rows of each
// tensor.
func Build(ctx context.Context, src formats.Source, c codec.Planner, sel func(tensor.Info) bool, o Options) (*Plan, error) {
	if o.Workers < 1 {
		o.Workers = 1
	}
	_, estimated := c.(codec.SizeEstimator)
	plan := &Plan{Importance: Importance(src), Estimated: estimated}
	alpha := Weights(src)
	infos := src.Tensors()
	var idx []int
	for i, t := range infos {
		if sel(t) {
			idx = append(idx, i)
		}
	}
	plan.Tensors = make([]*Tensor, len(idx))
	unsupported := make([]error, len(idx))
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(o.Workers)
	for k, i := range idx {
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				return err
			}
			t, err := estimate(src, c, i, infos[i], plan.Importance[infos[i].Name], o)
			if errors.Is(err, codec.ErrUnsupported) {
				// Values the codec cannot hold (for example
				// non-finite): the tensor stays out of the plan and
				// is stored unchanged.
				unsupported[k] = err
				return nil
			}
			if err != nil {
				return fmt.Errorf("tensor %q: %w", infos[i].Name, err)
			}
			if a, ok := alpha[infos[i].Name]; ok {
				t.Weight = a
				for k := range t.Options {
					t.Options[k].Dist *= a
				}
			}
			plan.Tensors[k] = t
			if o.Progress != nil {
				o.Progress(infos[i])
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	kept := plan.Tensors[:0]
	for k, t := range plan.Tensors {
		if t != nil {
			kept = append(kept, t)
		} else {
			plan.Unsupported++
			if plan.UnsupportedErr == nil {
				plan.UnsupportedErr = unsupported[k]
			}
		}
	}
	plan.Tensors = kept
	return plan, nil
}

// sampleRows returns n row indices spread evenly over rows.
func sampleRows(rows, n int) []int {
	if n >= rows {
		out := make([]int, rows)
		for i := range out {
			out[i] = i
		}
		return out
	}
	out := make([]int, n)
	for i := range out {
		out[i] = int((int64(2*i+1) * int64(rows)) / int64(2*n))
	}
	return out
}

func estimate(src formats.Source, p codec.Planner, i int, t tensor.Info, imp []float32, o Options) (*Tensor, error) {
	r64, c64 := t.Matrix()
	transposed := o.Transpose != nil && len(t.Shape) == 2 && o.Transpose(t)
	if transposed {
		r64, c64 = c64, r64
	}
	rows, cols := int(r64), int(c64)
	if rows <= 0 || cols <= 0 {
		return nil, fmt.Errorf("%s needs a non-empty matrix, got shape %v", p.Name(), t.Shape)
	}
	if len(imp) != cols {
		imp = nil
	}
	b, err := src.Bytes(i)
	if err != nil {
		return nil, err
	}
	defer src.Release(i)
	n := o.SampleRows
	if n <= 0 {
		n = sampleSize(cols)
	}
	pick := sampleRows(rows, n)
	x := make([]float32, len(pick)*cols)
	if transposed || int64(len(b))%int64(rows) != 0 {
		all := make([]float32, t.Elems())
		if err := tensor.ToFloat32(all, t.DType, b); err != nil {
			return nil, err
		}
		for k, r := range pick {
			for c := 0; c < cols; c++ {
				if transposed {
					x[k*cols+c] = all[c*rows+r]
				} else {
					x[k*cols+c] = all[r*cols+c]
				}
			}
		}
	} else {
		rb := len(b) / rows
		for k, r := range pick {
			if err := tensor.ToFloat32(x[k*cols:(k+1)*cols], t.DType, b[r*rb:(r+1)*rb]); err != nil {
				return nil, err
			}
		}
	}
	cands := p.Candidates(rows, cols)
	if len(cands) == 0 {
		return nil, fmt.Errorf("%s offers no configuration for a %d×%d matrix", p.Name(), rows, cols)
	}
	var dist []float64
	var sizes []int64
	if je, ok := p.(codec.JointEstimator); ok {
		sizes, dist, err = je.Estimate(x, rows, cols, imp, cands)
		if err == nil && len(sizes) != len(cands) {
			return nil, fmt.Errorf("%s: %d sizes for %d candidates", p.Name(), len(sizes), len(cands))
		}
	} else {
		dist, err = p.Distortions(x, cols, imp, cands)
	}
	if err != nil {
		return nil, err // ErrUnsupported: the tensor is stored unchanged
	}
	if len(dist) != len(cands) {
		return nil, fmt.Errorf("%s: %d distortions for %d candidates", p.Name(), len(dist), len(cands))
	}
	var sig float64
	for k, v := range x {
		w := 1.0
		if imp != nil {
			w = float64(imp[k%cols])
		}
		sig += w * float64(v) * float64(v)
	}
	scale := float64(rows) / float64(len(pick))
	if sizes == nil {
		if sizes, err = candidateSizes(p, x, rows, cols, imp, cands); err != nil {
			return nil, err
		}
	}
	tt := &Tensor{Info: t, Signal: sig * scale, Weight: 1}
	for k, c := range cands {
		size := sizes[k]
		// The objective counts each tensor's relative error: the noise
		// it adds to its layer's output over that output's power.
		d := dist[k]
		if sig > 0 {
			d /= sig
		}
		tt.Options = append(tt.Options, Option{Config: c, Bytes: size, Dist: d})
	}
	return tt, nil
}

// candidateSizes returns the payload size of the rows×cols matrix coded
// with each of cfgs: estimated from the sample x by a SizeEstimator, else
// exact from the shape.
func candidateSizes(p codec.Planner, x []float32, rows, cols int, imp []float32, cfgs []codec.Config) ([]int64, error) {
	se, ok := p.(codec.SizeEstimator)
	if !ok {
		sizes := make([]int64, len(cfgs))
		for k, c := range cfgs {
			size, err := p.ConfigSize(c, rows, cols)
			if err != nil {
				return nil, err
			}
			sizes[k] = size
		}
		return sizes, nil
	}
	sizes, err := se.EstimateSizes(x, rows, cols, imp, cfgs)
	if err != nil {
		return nil, err
	}
	if len(sizes) != len(cfgs) {
		return nil, fmt.Errorf("%s: %d size estimates for %d candidates", p.Name(), len(sizes), len(cfgs))
	}
	for k, n := range sizes {
		if n <= 0 {
			return nil, fmt.Errorf("%s: size estimate %d for %s", p.Name(), n, cfgs[k])
		}
	}
	return sizes, nil
}

// Allocate chooses one option per tensor so that the payloads total at
// most budget bytes with the least total estimated error. It fails if
// even the smallest options exceed the budget. An Estimated plan is
// allocated monotonically (see the package comment).
func (p *Plan) Allocate(budget int64) error {
	p.Budget = budget
	if minb := p.MinBytes(); minb > budget {
		return fmt.Errorf("the budget leaves %d bytes for the compressed tensors; the smallest coding needs %d", budget, minb)
	}
	if p.Estimated {
		p.allocateMonotone(budget)
		return nil
	}
	return p.allocateFill(budget)
}

// allocateMonotone takes the longest prefix of the hull segments of all
// tensors, ranked by error reduction per byte, that fits budget. A larger
// budget takes a longer prefix of the same ranking, so every tensor's
// choice moves only up its hull: more bytes, less error.
func (p *Plan) allocateMonotone(budget int64) {
	type segment struct {
		k, j  int     // tensor, option at the segment's upper end
		gain  float64 // error reduction per byte
		bytes int64
	}
	var segs []segment
	var total int64
	for k, t := range p.Tensors {
		h := Hull(t.Options)
		t.Choice = h[0]
		total += t.Options[h[0]].Bytes
		prev := math.Inf(1)
		for i := 1; i < len(h); i++ {
			a, b := t.Options[h[i-1]], t.Options[h[i]]
			// The hull's gains fall along it; rounding must not
			// reorder a tensor's own segments.
			g := min(prev, (a.Dist-b.Dist)/float64(b.Bytes-a.Bytes))
			prev = g
			segs = append(segs, segment{k, h[i], g, b.Bytes - a.Bytes})
		}
	}
	// Stable: equal gains keep tensor order, then hull order.
	sort.SliceStable(segs, func(a, b int) bool { return segs[a].gain > segs[b].gain })
	for _, s := range segs {
		if total+s.bytes > budget {
			break
		}
		total += s.bytes
		p.Tensors[s.k].Choice = s.j
	}
}

// allocateFill is the allocation of exact sizes: a Lagrangian search on
// the hulls, greedy filling and pair moves.
func (p *Plan) allocateFill(budget int64) error {
	hulls := make([][]int, len(p.Tensors))
	for k, t := range p.Tensors {
		hulls[k] = Hull(t.Options)
	}
	pick := func(lambda float64) int64 {
		var total int64
		for k, t := range p.Tensors {
			best, bi := math.Inf(1), hulls[k][0]
			for _, j := range hulls[k] {
				o := t.Options[j]
				if v := o.Dist + lambda*float64(o.Bytes); v < best {
					best, bi = v, j
				}
			}
			t.Choice = bi
			total += t.Options[bi].Bytes
		}
		return total
	}
	// Bisection on log λ: large λ favours small payloads.
	lo, hi := -60.0, 60.0
	if pick(math.Exp(lo)) <= budget {
		hi = lo
	} else {
		for range 200 {
			mid := (lo + hi) / 2
			if pick(math.Exp(mid)) <= budget {
				hi = mid
			} else {
				lo = mid
			}
		}
	}
	total := pick(math.Exp(hi))
	if total > budget { // every hull's first point is its smallest
		return fmt.Errorf("rate: allocation of %d bytes exceeds the budget of %d", total, budget)
	}
	total = p.fill(budget, total)
	// Pair moves: change two tensors at once (one usually down, one up)
	// when that lowers the error within the budget, then fill again.
	for range 100 {
		type move struct {
			k, j  int
			bytes int64
			dist  float64
		}
		var moves []move
		for k, t := range p.Tensors {
			cur := t.Options[t.Choice]
			for _, j := range hulls[k] {
				if j != t.Choice {
					o := t.Options[j]
					moves = append(moves, move{k, j, o.Bytes - cur.Bytes, o.Dist - cur.Dist})
				}
			}
		}
		left := budget - total
		best, bi, bj := -1e-12, -1, -1
		for a := range moves {
			ma := moves[a]
			for b := a + 1; b < len(moves); b++ {
				mb := moves[b]
				if ma.k == mb.k || ma.bytes+mb.bytes > left {
					continue
				}
				if d := ma.dist + mb.dist; d < best {
					best, bi, bj = d, a, b
				}
			}
		}
		if bi < 0 {
			break
		}
		for _, m := range []move{moves[bi], moves[bj]} {
			p.Tensors[m.k].Choice = m.j
			total += m.bytes
		}
		total = p.fill(budget, total)
	}
	return nil
}

// fill spends what is left of budget (total bytes used so far) on the
// upgrades with the best error reduction per byte, and returns the new
// total.
func (p *Plan) fill(budget, total int64) int64 {
	for {
		left := budget - total
		bk, bj, best := -1, -1, 0.0
		for k, t := range p.Tensors {
			cur := t.Options[t.Choice]
			for j, o := range t.Options {
				extra := o.Bytes - cur.Bytes
				if extra <= 0 || extra > left || o.Dist >= cur.Dist {
					continue
				}
				if g := (cur.Dist - o.Dist) / float64(extra); g > best {
					bk, bj, best = k, j, g
				}
			}
		}
		if bk < 0 {
			break
		}
		t := p.Tensors[bk]
		total += t.Options[bj].Bytes - t.Options[t.Choice].Bytes
		t.Choice = bj
	}
	return total
}

// Hull returns the indices of the options on the lower convex hull of
// (bytes, dist), by increasing bytes.
func Hull(opts []Option) []int {
	idx := make([]int, len(opts))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool {
		oa, ob := opts[idx[a]], opts[idx[b]]
		if oa.Bytes != ob.Bytes {
			return oa.Bytes < ob.Bytes
		}
		return oa.Dist < ob.Dist
	})
	var h []int
	for _, i := range idx {
		o := opts[i]
		if len(h) > 0 && o.Dist >= opts[h[len(h)-1]].Dist {
			continue // dominated
		}
		for len(h) >= 2 {
			a, b := opts[h[len(h)-2]], opts[h[len(h)-1]]
			// Drop b if it lies on or above the segment a–o.
			if (b.Dist-a.Dist)*float64(o.Bytes-a.Bytes) >= (o.Dist-a.Dist)*float64(b.Bytes-a.Bytes) {
				h = h[:len(h)-1]
			} else {
				break
			}
		}
		h = append(h, i)
	}
	return h
}
