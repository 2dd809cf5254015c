package tensor

import (
	"errors"
	"math"
	"testing"

	"github.com/x448/float16"
)

func TestByteSize(t *testing.T) {
	cases := []struct {
		d     DType
		shape []int64
		want  int64
		err   error
	}{
		{F32, []int64{3, 4}, 48, nil},
		{BF16, nil, 2, nil},
		{F16, []int64{0, 7}, 0, nil},
		{Bool, []int64{5}, 5, nil},
		{Q4_0, []int64{2, 64}, 2 * 2 * 18, nil},
		{Q6_K, []int64{576, 256}, 576 * 210, nil},
		{Q4_K, []int64{576, 100}, 0, ErrShape},
		{F32, []int64{-1, 4}, 0, ErrShape},
		{F32, []int64{1 << 30, 1 << 30}, 0, ErrShape},
		{F32, []int64{1 << 62, 4}, 0, ErrShape},
		{DType(999), []int64{1}, 0, ErrUnknownDType},
	}
	for _, c := range cases {
		got, err := ByteSize(c.d, c.shape)
		if !errors.Is(err, c.err) || (err == nil && got != c.want) {
			t.Errorf("ByteSize(%v, %v) = %d, %v; want %d, %v", c.d, c.shape, got, err, c.want, c.err)
		}
	}
}

func TestGGMLTypes(t *testing.T) {
	for _, d := range []DType{F32, F16, BF16, F64, I8, I16, I32, I64, Q4_0, Q4_K, Q6_K, IQ4_NL, MXFP4} {
		g, ok := d.GGMLType()
		if !ok {
			t.Fatalf("%v has no ggml type", d)
		}
		back, err := FromGGMLType(g)
		if err != nil || back != d {
			t.Errorf("FromGGMLType(%d) = %v, %v; want %v", g, back, err, d)
		}
		if p, err := ParseDType(d.String()); err != nil || p != d {
			t.Errorf("ParseDType(%q) = %v, %v", d.String(), p, err)
		}
	}
	for _, g := range []uint32{4, 5, 31, 200, 1 << 20} {
		if _, err := FromGGMLType(g); err == nil {
			t.Errorf("FromGGMLType(%d) accepted", g)
		}
	}
	if _, ok := U16.GGMLType(); ok {
		t.Error("U16 has no ggml type")
	}
}

func TestFloatConversions(t *testing.T) {
	x := []float32{0, 1, -2.5, 65504, 1e-8, 3.14159265, float32(math.Inf(-1)), 0.1}
	for _, d := range []DType{F64, F32, F16, BF16} {
		b := make([]byte, int64(len(x))*d.BlockBytes())
		if err := FromFloat32(b, d, x); err != nil {
			t.Fatal(err)
		}
		y := make([]float32, len(x))
		if err := ToFloat32(y, d, b); err != nil {
			t.Fatal(err)
		}
		for i := range x {
			tol := map[DType]float64{F64: 0, F32: 0, F16: 1.0 / 1024, BF16: 1.0 / 128}[d]
			diff := math.Abs(float64(x[i]) - float64(y[i]))
			if math.IsInf(float64(x[i]), 0) {
				if x[i] != y[i] {
					t.Errorf("%v: %v became %v", d, x[i], y[i])
				}
				continue
			}
			if diff > tol*math.Abs(float64(x[i]))+6e-8 {
				t.Errorf("%v: %v became %v", d, x[i], y[i])
			}
		}
	}
	// Round to nearest even at the halfway point between two BF16 values.
	if got := FloatToBF16(math.Float32frombits(0x3f808000)); got != 0x3f80 {
		t.Errorf("FloatToBF16 tie = %#x, want 0x3f80", got)
	}
	if got := FloatToBF16(math.Float32frombits(0x3f818000)); got != 0x3f82 {
		t.Errorf("FloatToBF16 tie = %#x, want 0x3f82", got)
	}
	if got := FloatToBF16(float32(math.NaN())); got&0x7f80 != 0x7f80 || got&0x7f == 0 {
		t.Errorf("FloatToBF16(NaN) = %#x is not a NaN", got)
	}
	if err := ToFloat32(make([]float32, 2), F32, make([]byte, 7)); !errors.Is(err, ErrShape) {
		t.Errorf("short source: %v", err)
	}
	if err := ToFloat32(make([]float32, 32), Q4_0, make([]byte, 18)); !errors.Is(err, ErrNotDecodable) {
		t.Errorf("unregistered dequantizer: %v", err)
	}
	if err := FromFloat32(make([]byte, 4), I32, []float32{1}); err == nil {
		t.Error("FromFloat32 to I32 accepted")
	}
}

func BenchmarkToFloat32F16(b *testing.B) {
	x := make([]float32, 1<<16)
	src := make([]byte, 2*len(x))
	b.SetBytes(int64(len(src)))
	b.ReportAllocs()
	for b.Loop() {
		ToFloat32(x, F16, src)
	}
}

func TestFloatToHalfMatchesReference(t *testing.T) {
	check := func(u uint32) {
		f := math.Float32frombits(u)
		got := FloatToHalf(f)
		want := uint16(float16.Fromfloat32(f))
		if f != f {
			if got&0x7c00 != 0x7c00 || got&0x3ff == 0 || got&0x8000 != want&0x8000 {
				t.Fatalf("FloatToHalf(NaN %#x) = %#x is not a NaN of the same sign", u, got)
			}
			return
		}
		if got != want {
			t.Fatalf("FloatToHalf(%g = %#x) = %#x, want %#x", f, u, got, want)
		}
	}
	for u := uint64(0); u < 1<<32; u += 4093 {
		check(uint32(u))
	}
	// Around every rounding boundary: binary16 exponent edges, ties, the
	// overflow threshold and the subnormal range.
	for _, f := range []float32{0, 65504, 65519.99, 65520, 65536, 6.1035156e-05, 6.097555e-05, 5.9604645e-08, 2.9802322e-08, 2.9802326e-08, 1.0009766, 1.0004883, 1.0014648} {
		check(math.Float32bits(f))
		check(math.Float32bits(-f))
		for d := uint32(1); d < 4; d++ {
			check(math.Float32bits(f) + d)
			check(math.Float32bits(f) - d)
		}
	}
}

func BenchmarkFromFloat32F16(b *testing.B) {
	x := make([]float32, 1<<16)
	for i := range x {
		x[i] = float32(i) * 1e-3
	}
	dst := make([]byte, 2*len(x))
	b.SetBytes(int64(len(dst)))
	for b.Loop() {
		FromFloat32(dst, F16, x)
	}
}
