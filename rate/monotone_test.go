package rate

import (
	"context"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/tpconvert/tpconvert/fixtures/gen"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/formats/safetensors"
	"github.com/tpconvert/tpconvert/internal/toyentropy"
	"github.com/tpconvert/tpconvert/tensor"
)

// randomPlan returns tensors with bits from 2 to 8 in steps of 1/perBit
// bit, each (groups) at three group lengths whose scales cost 0, 1/16 and
// 1/4 bit per weight more and take 0, 5 % and 15 % off the error, the
// error of each option off the curve by up to ±jitter: coarse hulls like
// tenpak_x_v2's for perBit 1 with groups, fine ones like a per-tensor
// step's for perBit 8 without.
func randomPlan(rng *rand.Rand, tensors, perBit int, groups bool, jitter float64) *Plan {
	p := &Plan{}
	for range tensors {
		n := float64(1000 + rng.IntN(50000))
		c := 0.2 + 2*rng.Float64()
		tt := &Tensor{Weight: 1}
		for s := 2 * perBit; s <= 8*perBit; s++ {
			b := float64(s) / float64(perBit)
			extra := [][2]float64{{0, 1}}
			if groups {
				extra = [][2]float64{{1.0 / 16, 0.95}, {1.0 / 4, 0.85}, {0, 1}}
			}
			for _, e := range extra {
				d := c * math.Exp2(-2*b) * e[1] * (1 - jitter + 2*jitter*rng.Float64())
				tt.Options = append(tt.Options, Option{Bytes: int64(n * (b + e[0]) / 8), Dist: d})
			}
		}
		p.Tensors = append(p.Tensors, tt)
	}
	return p
}

func maxBytes(p *Plan) int64 {
	var n int64
	for _, t := range p.Tensors {
		m := int64(0)
		for _, o := range t.Options {
			m = max(m, o.Bytes)
		}
		n += m
	}
	return n
}

// nonMonotone allocates with alloc at budgets spread from p's smallest to
// its largest total and returns how many pairs b1 < b2 give some tensor
// fewer bytes or more error under b2 than under b1, and how many pairs
// there were.
func nonMonotone(t *testing.T, p *Plan, n int, alloc func(int64) error) (bad, pairs int) {
	t.Helper()
	lo, hi := p.MinBytes(), maxBytes(p)
	choices := make([][]Option, n)
	for i := range n {
		b := lo + (hi-lo)*int64(i)/int64(n-1)
		if err := alloc(b); err != nil {
			t.Fatalf("budget %d: %v", b, err)
		}
		if p.Bytes() > b {
			t.Fatalf("budget %d: %d bytes allocated", b, p.Bytes())
		}
		for _, tt := range p.Tensors {
			choices[i] = append(choices[i], tt.Chosen())
		}
	}
	for i := range n {
		for j := i + 1; j < n; j++ {
			pairs++
			for k := range p.Tensors {
				a, b := choices[i][k], choices[j][k]
				if b.Bytes < a.Bytes || b.Dist > a.Dist {
					bad++
					break
				}
			}
		}
	}
	return bad, pairs
}

// TestAllocateMonotone: for every pair of budgets b1 < b2, the monotone
// allocation gives every tensor at least the bytes and at most the error
// under b2 that it gets under b1, on coarse and fine random hulls. The same
// check finds pairs that break it in the allocation of exact sizes (greedy
// fill and pair moves) on coarse hulls: the check can fail.
func TestAllocateMonotone(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var legacyBad, legacyPairs int
	for trial := range 20 {
		coarse := randomPlan(rng, 8, 1, true, 0.1)
		coarse.Estimated = true
		if bad, pairs := nonMonotone(t, coarse, 40, coarse.Allocate); bad > 0 {
			t.Errorf("trial %d, coarse hulls: %d of %d budget pairs not monotone", trial, bad, pairs)
		}
		coarse.Estimated = false
		bad, pairs := nonMonotone(t, coarse, 40, coarse.Allocate)
		legacyBad += bad
		legacyPairs += pairs
		fine := randomPlan(rng, 8, 8, false, 0.1)
		fine.Estimated = true
		if bad, pairs := nonMonotone(t, fine, 40, fine.Allocate); bad > 0 {
			t.Errorf("trial %d, fine hulls: %d of %d budget pairs not monotone", trial, bad, pairs)
		}
	}
	t.Logf("allocation of exact sizes on coarse hulls: %d of %d budget pairs not monotone", legacyBad, legacyPairs)
	if legacyBad == 0 {
		t.Error("the check found no non-monotone pair in the allocation of exact sizes: it may not be able to fail")
	}
}

// TestAllocateMonotoneSpends: on fine hulls (smooth estimates, as of a
// per-tensor step) the monotone allocation leaves less unspent than the
// largest single step of any tensor, and no allocation of exact sizes
// (greedy fill and pair moves) spending as many bytes has less error: a
// prefix of the ranking is a Lagrangian solution. What it gives away is
// the unspent remainder, logged against the fill at the full budget.
func TestAllocateMonotoneSpends(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	var excess, unspent float64
	const trials = 50
	for trial := range trials {
		p := randomPlan(rng, 12, 8, false, 0.02)
		budget := p.MinBytes() + rng.Int64N(maxBytes(p)-p.MinBytes())
		p.Estimated = true
		if err := p.Allocate(budget); err != nil {
			t.Fatal(err)
		}
		var got float64
		var step int64
		for _, tt := range p.Tensors {
			got += tt.Chosen().Dist
			h := Hull(tt.Options)
			for i := 1; i < len(h); i++ {
				step = max(step, tt.Options[h[i]].Bytes-tt.Options[h[i-1]].Bytes)
			}
		}
		spent := p.Bytes()
		if left := budget - spent; left < 0 || left >= step {
			t.Errorf("trial %d: %d bytes of %d unspent, the largest step is %d", trial, left, budget, step)
		}
		unspent += float64(budget-spent) / float64(budget)
		dist := func(b int64) float64 {
			if err := p.allocateFill(b); err != nil {
				t.Fatal(err)
			}
			var d float64
			for _, tt := range p.Tensors {
				d += tt.Chosen().Dist
			}
			return d
		}
		if ref := dist(spent); got > ref*(1+1e-9) {
			t.Errorf("trial %d: error %g above %g of the fill at the same %d bytes", trial, got, ref, spent)
		}
		excess += got/dist(budget) - 1
	}
	t.Logf("fine hulls, %d trials: %.3f %% of the budget unspent, error %.2f %% above the fill's at the full budget (means)", trials, 100*unspent/trials, 100*excess/trials)
}

// openGen writes the preset as BF16 safetensors and opens it.
func openGen(t *testing.T, cfg gen.Config) formats.Source {
	t.Helper()
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := gen.WriteSafetensors(path, cfg, tensor.BF16, 2); err != nil {
		t.Fatal(err)
	}
	src, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// TestBuildEstimatedMonotone plans a generated checkpoint with a codec
// whose sizes are estimates (codec.SizeEstimator): the plan is Estimated,
// its sizes are the codec's estimates (not its ConfigSize bound), and its
// allocation is monotone over budget pairs.
func TestBuildEstimatedMonotone(t *testing.T) {
	src := openGen(t, gen.Presets["small"])
	c := toyentropy.New()
	sel := func(t tensor.Info) bool { return len(t.Shape) == 2 }
	p, err := Build(context.Background(), src, c, sel, Options{Workers: 2, SampleRows: 32})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Estimated || len(p.Tensors) != 16 {
		t.Fatalf("plan: estimated %v, %d tensors", p.Estimated, len(p.Tensors))
	}
	for _, tt := range p.Tensors {
		r, cl := tt.Info.Matrix()
		for _, o := range tt.Options {
			bound, _ := c.ConfigSize(o.Config, int(r), int(cl))
			if o.Bytes <= 0 || o.Bytes >= bound {
				t.Fatalf("%s %s: %d bytes, bound %d: not the estimate", tt.Info.Name, o.Config, o.Bytes, bound)
			}
		}
	}
	if bad, pairs := nonMonotone(t, p, 60, p.Allocate); bad > 0 {
		t.Errorf("%d of %d budget pairs not monotone", bad, pairs)
	}
}

// TestTiedEmbeddingNotStarved: on a model whose token embedding is the
// output head, the embedding's estimates carry both roles' weight (as the
// untied embedding and head together), and no other tensor has been
// given a step up its hull worth less per byte than the embedding's next
// one: surplus bytes do not buy precision elsewhere while the tied
// tensor could use them better.
func TestTiedEmbeddingNotStarved(t *testing.T) {
	cfg := gen.Presets["small"]
	cfg.Tied = true
	src := openGen(t, cfg)
	sel := func(t tensor.Info) bool { return len(t.Shape) == 2 }
	p, err := Build(context.Background(), src, toyentropy.New(), sel, Options{Workers: 2, SampleRows: 32})
	if err != nil {
		t.Fatal(err)
	}
	const emb = "model.embed_tokens.weight"
	var e *Tensor
	for _, tt := range p.Tensors {
		if tt.Info.Name == emb {
			e = tt
		}
	}
	if e == nil || e.Weight != float64(2*cfg.Layers) {
		t.Fatalf("tied embedding %v: want weight %d (embedding and head)", e, 2*cfg.Layers)
	}
	gain := func(tt *Tensor, next bool) (float64, bool) {
		h := Hull(tt.Options)
		for i, j := range h {
			if j != tt.Choice {
				continue
			}
			if next && i+1 < len(h) {
				a, b := tt.Options[j], tt.Options[h[i+1]]
				return (a.Dist - b.Dist) / float64(b.Bytes-a.Bytes), true
			}
			if !next && i > 0 {
				a, b := tt.Options[h[i-1]], tt.Options[j]
				return (a.Dist - b.Dist) / float64(b.Bytes-a.Bytes), true
			}
		}
		return 0, false
	}
	checked := 0
	for _, bpw := range []float64{2.5, 3, 4, 5} {
		var params int64
		for _, tt := range p.Tensors {
			params += tt.Info.Elems()
		}
		if err := p.Allocate(int64(bpw * float64(params) / 8)); err != nil {
			t.Fatal(err)
		}
		ge, ok := gain(e, true)
		if !ok {
			continue // the embedding is at its finest step
		}
		for _, tt := range p.Tensors {
			if g, ok := gain(tt, false); ok && tt != e && g < ge {
				t.Errorf("%g bits: %s took a step worth %g per byte while the tied embedding's next is worth %g", bpw, tt.Info.Name, g, ge)
			}
		}
		checked++
	}
	if checked == 0 {
		t.Error("the embedding was at its finest step at every budget: nothing checked")
	}
}
