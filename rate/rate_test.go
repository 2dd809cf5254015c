package rate

import (
	"context"
	"math"
	"math/rand/v2"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/codec/tenpakx2"
	"github.com/tpconvert/tpconvert/fixtures/gen"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/formats/safetensors"
	"github.com/tpconvert/tpconvert/tensor"
)

// brute returns the least total Dist of any allocation within budget.
func brute(ts []*Tensor, budget int64) float64 {
	best := math.Inf(1)
	var rec func(k int, bytes int64, d float64)
	rec = func(k int, bytes int64, d float64) {
		if bytes > budget {
			return
		}
		if k == len(ts) {
			best = min(best, d)
			return
		}
		for _, o := range ts[k].Options {
			rec(k+1, bytes+o.Bytes, d+o.Dist)
		}
	}
	rec(0, 0, 0)
	return best
}

// TestAllocateNearOptimal compares Allocate with exhaustive search on
// small random problems with convex-ish rate–distortion curves: it must
// stay within the budget and within 10 % of the optimum (a Lagrangian
// solution plus greedy filling is not exact on discrete problems).
func TestAllocateNearOptimal(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	worse := 0
	for trial := 0; trial < 200; trial++ {
		p := &Plan{}
		for k := 0; k < 4; k++ {
			n := int64(1000 + rng.IntN(5000))
			c := 0.5 + rng.Float64()
			tt := &Tensor{}
			for b := 1; b <= 6; b++ {
				d := c * math.Pow(2, -2*float64(b)) * (0.8 + 0.4*rng.Float64())
				tt.Options = append(tt.Options, Option{Bytes: n * int64(b) / 8, Dist: d})
			}
			p.Tensors = append(p.Tensors, tt)
		}
		budget := p.MinBytes() + int64(rng.IntN(int(p.MinBytes()*4)))
		if err := p.Allocate(budget); err != nil {
			t.Fatal(err)
		}
		if p.Bytes() > budget {
			t.Fatalf("trial %d: %d bytes over a budget of %d", trial, p.Bytes(), budget)
		}
		var got float64
		for _, tt := range p.Tensors {
			got += tt.Chosen().Dist
		}
		opt := brute(p.Tensors, budget)
		if got > opt*1.10+1e-12 {
			worse++
			t.Logf("trial %d: %g vs optimum %g", trial, got, opt)
		}
	}
	if worse > 10 {
		t.Errorf("%d of 200 allocations more than 10%% above the optimum", worse)
	}
}

func TestAllocateRefusesImpossibleBudget(t *testing.T) {
	p := &Plan{Tensors: []*Tensor{{Options: []Option{{Bytes: 100, Dist: 1}, {Bytes: 200, Dist: 0.5}}}}}
	if err := p.Allocate(99); err == nil {
		t.Error("Allocate accepted a budget below the smallest option")
	}
	if err := p.Allocate(1000); err != nil || p.Tensors[0].Choice != 1 {
		t.Errorf("ample budget: choice %d, %v", p.Tensors[0].Choice, err)
	}
}

func TestHull(t *testing.T) {
	opts := []Option{{Bytes: 10, Dist: 10}, {Bytes: 20, Dist: 9.9}, {Bytes: 20, Dist: 4}, {Bytes: 30, Dist: 3.5}, {Bytes: 40, Dist: 1}, {Bytes: 50, Dist: 2}}
	h := Hull(opts)
	want := []int{0, 2, 4}
	if len(h) != len(want) {
		t.Fatalf("hull %v, want %v", h, want)
	}
	for i := range h {
		if h[i] != want[i] {
			t.Fatalf("hull %v, want %v", h, want)
		}
	}
}

func TestSampleRows(t *testing.T) {
	for _, c := range [][2]int{{10, 128}, {1000, 128}, {129, 128}, {5, 1}} {
		s := sampleRows(c[0], c[1])
		if len(s) != min(c[0], c[1]) {
			t.Errorf("%v: %d rows", c, len(s))
		}
		for i := range s {
			if s[i] < 0 || s[i] >= c[0] || i > 0 && s[i] <= s[i-1] {
				t.Fatalf("%v: bad sample %v", c, s)
			}
		}
	}
}

func TestSiluSquare(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, sigma := range []float64{0.1, 1, 3} {
		var mc float64
		const n = 400000
		for i := 0; i < n; i++ {
			a := sigma * rng.NormFloat64()
			s := a / (1 + math.Exp(-a))
			mc += s * s
		}
		mc /= n
		if got := siluSquare(sigma); math.Abs(got-mc) > 0.02*mc {
			t.Errorf("σ=%g: quadrature %g, Monte Carlo %g", sigma, got, mc)
		}
	}
}

// TestImportanceAndBuild runs the sensitivity model and the estimate on a
// generated Llama checkpoint (Hugging Face names): every projection and
// the output head get a column weight vector of the right length, q/k/v
// share their norm's squares, and Build's estimates fall with more bits.
func TestImportanceAndBuild(t *testing.T) {
	cfg := gen.Presets["tiny"]
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := gen.WriteSafetensors(path, cfg, tensor.BF16, 1); err != nil {
		t.Fatal(err)
	}
	src, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	imp := Importance(src)
	for l := 0; l < cfg.Layers; l++ {
		p := "model.layers." + string(rune('0'+l)) + "."
		for _, n := range []string{"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"} {
			v, ok := imp[p+n+".weight"]
			if !ok {
				t.Errorf("no importance for %s", p+n)
				continue
			}
			want := cfg.Hidden
			if n == "mlp.down_proj" {
				want = cfg.Intermediate
			} else if n == "self_attn.o_proj" {
				want = cfg.Hidden / cfg.Heads * cfg.Heads
			}
			if len(v) != want {
				t.Errorf("%s: %d weights, want %d", n, len(v), want)
			}
			for _, x := range v {
				if !(x > 0) || math.IsInf(float64(x), 0) {
					t.Fatalf("%s: importance %v", n, x)
				}
			}
		}
		if &imp[p+"self_attn.q_proj.weight"][0] != &imp[p+"self_attn.v_proj.weight"][0] {
			t.Error("q and v of one layer do not share their input's importance")
		}
	}
	if _, ok := imp["lm_head.weight"]; !ok {
		t.Error("no importance for lm_head")
	}
	sel := func(t tensor.Info) bool { return len(t.Shape) == 2 }
	plan, err := Build(context.Background(), src, v2(t), sel, Options{Workers: 2, SampleRows: 32})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Tensors) == 0 {
		t.Fatal("no tensors")
	}
	for _, tt := range plan.Tensors {
		prev := map[[3]int]float64{}
		for _, o := range tt.Options {
			cfg := o.Config.(tenpakx2.Config)
			if cfg.Grid == tenpakx2.GridHalf {
				continue
			}
			k := [3]int{int(cfg.Grid), cfg.Group, 0}
			if cfg.S8 {
				k[2] = 1
			}
			if p, ok := prev[k]; ok && o.Dist >= p {
				t.Errorf("%s: %s estimates %g, not below the bit depth before (%g)", tt.Info.Name, o.Config, o.Dist, p)
			}
			prev[k] = o.Dist
			if want, _ := tenpakx2.PayloadSize(tt.Info, cfg); want != o.Bytes {
				t.Errorf("%s %s: %d bytes, PayloadSize %d", tt.Info.Name, o.Config, o.Bytes, want)
			}
		}
	}
}

// tensorsCounter counts the calls of Tensors, each of which copies the
// source's tensor list.
type tensorsCounter struct {
	formats.Source
	calls atomic.Int64
}

func (c *tensorsCounter) Tensors() []tensor.Info { c.calls.Add(1); return c.Source.Tensors() }

// Importance and Build take the tensor list a fixed number of times, not
// once per tensor (which is quadratic in the tensor count).
func TestTensorListTakenOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	if err := gen.WriteSafetensors(path, gen.Presets["tiny"], tensor.BF16, 1); err != nil {
		t.Fatal(err)
	}
	st, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	src := &tensorsCounter{Source: st}
	n := len(st.Tensors())
	Importance(src)
	sel := func(t tensor.Info) bool { return len(t.Shape) == 2 }
	if _, err := Build(context.Background(), src, v2(t), sel, Options{Workers: 2, SampleRows: 8}); err != nil {
		t.Fatal(err)
	}
	if c := src.calls.Load(); c > 6 {
		t.Errorf("Tensors called %d times for %d tensors", c, n)
	}
}

// v2 returns tenpak_x_v2 as a planner.
func v2(t *testing.T) codec.Planner {
	t.Helper()
	c, err := codec.New("tenpak_x_v2", codec.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return c.(codec.Planner)
}

// TestTiedEmbeddingCountsInBothRoles: a token embedding that is also the
// output head (no lm_head) weighs as much as embedding and head of the
// untied model together, and its column weights average the embedding's
// (all 1) and the head's (the final norm's g², normalized to mean 1).
func TestTiedEmbeddingCountsInBothRoles(t *testing.T) {
	open := func(tied bool) formats.Source {
		cfg := gen.Presets["tiny"]
		cfg.Tied = tied
		path := filepath.Join(t.TempDir(), "m.safetensors")
		if err := gen.WriteSafetensors(path, cfg, tensor.BF16, 3); err != nil {
			t.Fatal(err)
		}
		src, err := safetensors.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { src.Close() })
		return src
	}
	const emb, head = "model.embed_tokens.weight", "lm_head.weight"
	untied, tied := open(false), open(true)
	wu, wt := Weights(untied), Weights(tied)
	if wu[emb] <= 0 || wu[head] <= 0 {
		t.Fatalf("untied weights %v lack the embedding or the head", wu)
	}
	if _, ok := wt[head]; ok {
		t.Fatalf("tied model has a head weight: %v", wt)
	}
	if want := wu[emb] + wu[head]; wt[emb] != want {
		t.Errorf("tied embedding weighs %g, want embedding + head = %g", wt[emb], want)
	}
	hu, ht := Importance(untied)[head], Importance(tied)[emb]
	if len(hu) == 0 || len(ht) != len(hu) {
		t.Fatalf("head importance %d columns, tied embedding %d", len(hu), len(ht))
	}
	var mean float64
	for _, v := range hu {
		mean += float64(v)
	}
	mean /= float64(len(hu))
	spread := false
	for c := range hu {
		want := (1 + float64(hu[c])/mean) / 2
		if math.Abs(float64(ht[c])-want) > 1e-6*want {
			t.Fatalf("column %d: tied weight %g, want (1 + %g/%g)/2 = %g", c, ht[c], hu[c], mean, want)
		}
		if math.Abs(want-1) > 1e-3 {
			spread = true
		}
	}
	if !spread {
		t.Error("the final norm's gains are all equal: the test cannot tell the roles apart")
	}
}
