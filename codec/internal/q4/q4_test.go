package q4

import (
	"bytes"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/tpconvert/tpconvert/tensor"
)

func quantize(t *testing.T, x []float32, l Layout, workers int) ([]byte, []uint16, []uint16) {
	t.Helper()
	nc, ng, err := l.Sizes()
	if err != nil {
		t.Fatal(err)
	}
	codes, scales, offsets := make([]byte, nc), make([]uint16, ng), make([]uint16, ng)
	if err := Quantize(codes, scales, offsets, x, l, workers); err != nil {
		t.Fatal(err)
	}
	return codes, scales, offsets
}

func TestNibbleOrder(t *testing.T) {
	// One row 0..15 in one group: offset 0, scale 1, codes equal values.
	x := make([]float32, 16)
	for i := range x {
		x[i] = float32(i)
	}
	l := Layout{Rows: 1, Cols: 16}
	codes, scales, offsets := quantize(t, x, l, 1)
	want := []byte{0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE}
	if !bytes.Equal(codes, want) {
		t.Errorf("codes = % x, want % x", codes, want)
	}
	if s, o := tensor.HalfToFloat(scales[0]), tensor.HalfToFloat(offsets[0]); s != 1 || o != 0 {
		t.Errorf("scale, offset = %v, %v; want 1, 0", s, o)
	}
	// Odd columns: row 1 starts in the high nibble of byte 1.
	x = []float32{0, 15, 0, 15, 15, 0}
	codes, _, _ = quantize(t, x, Layout{Rows: 2, Cols: 3}, 1)
	if want := []byte{0xF0, 0xF0, 0x0F}; !bytes.Equal(codes, want) {
		t.Errorf("3-column codes = % x, want % x", codes, want)
	}
}

func TestSizes(t *testing.T) {
	for _, tc := range []struct {
		l             Layout
		codes, groups int
	}{
		{Layout{4096, 4096, 0}, 8388608, 4096},
		{Layout{4096, 4096, 32}, 8388608, 4096 * 128},
		{Layout{3, 5, 2}, 8, 9},
		{Layout{3, 5, 5}, 8, 3},
		{Layout{3, 5, 100}, 8, 3},
		{Layout{1, 1, 0}, 1, 1},
		{Layout{0, 7, 3}, 0, 0},
		{Layout{7, 0, 3}, 0, 0},
	} {
		nc, ng, err := tc.l.Sizes()
		if err != nil || nc != tc.codes || ng != tc.groups {
			t.Errorf("%+v.Sizes() = %d, %d, %v; want %d, %d", tc.l, nc, ng, err, tc.codes, tc.groups)
		}
	}
	for _, l := range []Layout{{-1, 2, 0}, {1 << 40, 1 << 40, 0}, {2, 2, -1}} {
		if _, _, err := l.Sizes(); err == nil {
			t.Errorf("%+v.Sizes() succeeded", l)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, l := range []Layout{{1, 1, 0}, {1, 33, 32}, {7, 65, 32}, {33, 129, 0}, {64, 1000, 7}, {5, 4, 1}} {
		x := make([]float32, l.Rows*l.Cols)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		codes, scales, offsets := quantize(t, x, l, 1)
		y := make([]float32, len(x))
		Dequantize(y, codes, scales, offsets, l, false, 1)
		gl, gpr := l.GroupLen(), l.GroupsPerRow()
		for i := range x {
			r, c := i/l.Cols, i%l.Cols
			g := r*gpr + c/gl
			s := tensor.HalfToFloat(scales[g])
			o := tensor.HalfToFloat(offsets[g])
			// Half a step, plus the FP16 rounding of the offset.
			bound := s/2 + float32(math.Abs(float64(o)))/1024 + 1e-6
			if d := float32(math.Abs(float64(x[i] - y[i]))); d > bound {
				t.Fatalf("%+v: element %d: |%v − %v| = %v > %v", l, i, x[i], y[i], d, bound)
			}
		}
		// add mode adds exactly the decoded values.
		z := slices.Repeat([]float32{1}, len(x))
		Dequantize(z, codes, scales, offsets, l, true, 3)
		for i := range z {
			if z[i] != 1+y[i] {
				t.Fatalf("%+v: add mode element %d = %v, want %v", l, i, z[i], 1+y[i])
			}
		}
	}
}

func TestConstantGroup(t *testing.T) {
	x := []float32{0.25, 0.25, 0.25, 0, 0, 0}
	l := Layout{Rows: 2, Cols: 3}
	codes, scales, offsets := quantize(t, x, l, 1)
	if scales[0] != 0 || scales[1] != 0 {
		t.Errorf("scales = %v, want zeros", scales)
	}
	y := make([]float32, len(x))
	Dequantize(y, codes, scales, offsets, l, false, 1)
	if !slices.Equal(x, y) {
		t.Errorf("decoded %v, want %v", y, x)
	}
}

func TestWorkersDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	l := Layout{Rows: 301, Cols: 777, Group: 64} // odd columns: even row chunks
	x := make([]float32, l.Rows*l.Cols)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	c1, s1, o1 := quantize(t, x, l, 1)
	c4, s4, o4 := quantize(t, x, l, 4)
	if !bytes.Equal(c1, c4) || !slices.Equal(s1, s4) || !slices.Equal(o1, o4) {
		t.Error("Quantize with 1 and 4 workers differ")
	}
}

func TestRange(t *testing.T) {
	l := Layout{Rows: 1, Cols: 2}
	codes, s, o := make([]byte, 1), make([]uint16, 1), make([]uint16, 1)
	for _, x := range [][]float32{{-1e6, 0}, {0, 1e6}, {-7e4, -7e4}} {
		if err := Quantize(codes, s, o, x, l, 1); !errors.Is(err, ErrRange) {
			t.Errorf("Quantize(%v) = %v, want ErrRange", x, err)
		}
	}
}

func BenchmarkQuantize(b *testing.B) {
	l := Layout{Rows: 2048, Cols: 5632, Group: 32}
	x := make([]float32, l.Rows*l.Cols)
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	nc, ng, _ := l.Sizes()
	codes, scales, offsets := make([]byte, nc), make([]uint16, ng), make([]uint16, ng)
	b.SetBytes(int64(len(x)) * 2)
	for b.Loop() {
		if err := Quantize(codes, scales, offsets, x, l, 1); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDequantize(b *testing.B) {
	l := Layout{Rows: 2048, Cols: 5632, Group: 32}
	nc, ng, _ := l.Sizes()
	codes, scales, offsets := make([]byte, nc), make([]uint16, ng), make([]uint16, ng)
	dst := make([]float32, l.Rows*l.Cols)
	b.SetBytes(int64(len(dst)) * 2)
	for b.Loop() {
		Dequantize(dst, codes, scales, offsets, l, true, 1)
	}
}
