package rate

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/fixtures/gen"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/internal/toyentropy"
	"github.com/tpconvert/tpconvert/tensor"
)

// countingPlanner counts the planner calls of Build and how many run at
// once.
type countingPlanner struct {
	*toyentropy.Codec
	dist, est, size      atomic.Int64
	active, peak         atomic.Int64
	lastDist             atomic.Pointer[float32]
	sameSample, elsewise atomic.Int64
}

func (c *countingPlanner) enter() {
	n := c.active.Add(1)
	for {
		p := c.peak.Load()
		if n <= p || c.peak.CompareAndSwap(p, n) {
			return
		}
	}
}

func (c *countingPlanner) Distortions(x []float32, cols int, imp []float32, cfgs []codec.Config) ([]float64, error) {
	c.enter()
	defer c.active.Add(-1)
	c.dist.Add(1)
	c.lastDist.Store(&x[0])
	return c.Codec.Distortions(x, cols, imp, cfgs)
}

func (c *countingPlanner) EstimateSizes(x []float32, rows, cols int, imp []float32, cfgs []codec.Config) ([]int64, error) {
	c.est.Add(1)
	if c.lastDist.Load() == &x[0] {
		c.sameSample.Add(1)
	} else {
		c.elsewise.Add(1)
	}
	return c.Codec.EstimateSizes(x, rows, cols, imp, cfgs)
}

func (c *countingPlanner) ConfigSize(cfg codec.Config, rows, cols int) (int64, error) {
	c.size.Add(1)
	return c.Codec.ConfigSize(cfg, rows, cols)
}

// bytesCounter counts the tensors a source is asked for.
type bytesCounter struct {
	formats.Source
	calls atomic.Int64
}

func (b *bytesCounter) Bytes(i int) ([]byte, error) { b.calls.Add(1); return b.Source.Bytes(i) }

// TestBuildEstimatedWork: for a planner of estimated sizes Build decodes
// each selected tensor's sample once (the only tensor data it reads
// besides what the importance model reads), estimates sizes once per
// tensor from the very sample it measured the distortions on, never asks
// for ConfigSize, and runs at most Workers estimates at once.
func TestBuildEstimatedWork(t *testing.T) {
	st := openGen(t, gen.Presets["small"])
	src := &bytesCounter{Source: st}
	Importance(src)
	importance := src.calls.Load()
	sel := func(t tensor.Info) bool { return len(t.Shape) == 2 }
	for _, workers := range []int{1, 2} {
		src.calls.Store(0)
		c := &countingPlanner{Codec: toyentropy.New()}
		p, err := Build(context.Background(), src, c, sel, Options{Workers: workers, SampleRows: 16})
		if err != nil {
			t.Fatal(err)
		}
		n := int64(len(p.Tensors))
		if got := src.calls.Load() - importance; got != n {
			t.Errorf("workers %d: %d tensor reads besides the importance model's for %d tensors", workers, got, n)
		}
		if c.dist.Load() != n || c.est.Load() != n || c.size.Load() != 0 {
			t.Errorf("workers %d: %d Distortions, %d EstimateSizes, %d ConfigSize calls for %d tensors", workers, c.dist.Load(), c.est.Load(), c.size.Load(), n)
		}
		if workers == 1 && c.sameSample.Load() != n {
			t.Errorf("%d of %d size estimates on the sample the distortions were measured on", c.sameSample.Load(), n)
		}
		if pk := c.peak.Load(); pk > int64(workers) {
			t.Errorf("workers %d: %d estimates at once", workers, pk)
		}
	}
}
