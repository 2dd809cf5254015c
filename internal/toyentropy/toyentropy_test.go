package toyentropy

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/tensor"
)

func matrix(rows, cols int) (tensor.Info, []float32) {
	rng := rand.New(rand.NewPCG(1, 2))
	x := make([]float32, rows*cols)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	return tensor.Info{Name: "w", DType: tensor.F32, Shape: []int64{int64(rows), int64(cols)}, Size: int64(4 * rows * cols)}, x
}

// TestCapAndRoundTrip: a payload decodes to within half a step of the
// input, the estimate of a whole-tensor sample is at least the real size,
// and an allotment below the planned step's size makes Encode coarsen to
// fit it, down to the all-zero payload.
func TestCapAndRoundTrip(t *testing.T) {
	ti, x := matrix(64, 96)
	c := New()
	cfgs := []codec.Config{Step(40)}
	est, err := c.EstimateSizes(x, 64, 96, nil, cfgs)
	if err != nil {
		t.Fatal(err)
	}
	for _, allot := range []int64{est[0], est[0] / 2, est[0] / 8, 1} {
		pc, err := c.Planned(codec.Plan{Configs: map[string]codec.Config{"w": Step(40)}, Bytes: map[string]int64{"w": allot}})
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		if err := pc.Encode(&buf, ti, x); err != nil {
			t.Fatal(err)
		}
		if int64(buf.Len()) > allot {
			t.Errorf("allotment %d: %d bytes written", allot, buf.Len())
		}
		y := make([]float32, len(x))
		if err := pc.Decode(y, buf.Bytes(), ti, 1); err != nil {
			t.Fatalf("allotment %d: %v", allot, err)
		}
		for i := range x {
			if d := x[i] - y[i]; d*d > x[i]*x[i]*(1+1e-6) {
				t.Fatalf("allotment %d: element %d: %g decodes to %g", allot, i, x[i], y[i])
			}
		}
		if allot == est[0] && buf.Len() > 1 && int64(buf.Len()) > est[0] {
			t.Errorf("estimate %d below the real size %d", est[0], buf.Len())
		}
	}
	if err := New().Encode(&bytes.Buffer{}, ti, x); err != nil {
		t.Fatalf("unplanned: %v", err)
	}
}

func TestDecodeCorrupt(t *testing.T) {
	ti, x := matrix(8, 16)
	var buf bytes.Buffer
	if err := New().Encode(&buf, ti, x); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	for name, p := range map[string][]byte{
		"empty":     nil,
		"flag":      {7},
		"zero+tail": {0, 1},
		"short":     good[:4],
		"truncated": good[:len(good)-3],
		"step":      append([]byte{1, 0, 0, 0xc0, 0x7f}, good[5:]...),
	} {
		y := make([]float32, len(x))
		if err := New().Decode(y, p, ti, 1); !errors.Is(err, codec.ErrCorrupt) {
			t.Errorf("%s: %v, want ErrCorrupt", name, err)
		}
	}
}
