package gguf

import (
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/tpconvert/tpconvert/tensor"
)

// dequantTypes are the block types this package registers.
var dequantTypes = []tensor.DType{
	tensor.Q4_0, tensor.Q4_1, tensor.Q5_0, tensor.Q5_1, tensor.Q8_0,
	tensor.Q2_K, tensor.Q3_K, tensor.Q4_K, tensor.Q5_K, tensor.Q6_K,
	tensor.Q8_K, tensor.IQ4_NL,
}

func h16(f float32) (byte, byte) {
	h := tensor.FloatToHalf(f)
	return byte(h), byte(h >> 8)
}

// TestDequantizeByHand checks blocks whose values are worked out by hand
// from the ggml-common.h layouts.
func TestDequantizeByHand(t *testing.T) {
	type tc struct {
		name  string
		dtype tensor.DType
		block func() []byte
		want  func(i int) float32 // value of element i
	}
	tests := []tc{
		{"Q4_0 nibbles", tensor.Q4_0, func() []byte {
			b := make([]byte, 18)
			b[0], b[1] = h16(0.5)
			for j := 0; j < 16; j++ {
				b[2+j] = byte(j) | byte(15-j)<<4
			}
			return b
		}, func(i int) float32 {
			if i < 16 {
				return float32(i-8) * 0.5
			}
			return float32(7-(i-16)) * 0.5
		}},
		{"Q4_1 min", tensor.Q4_1, func() []byte {
			b := make([]byte, 20)
			b[0], b[1] = h16(0.25)
			b[2], b[3] = h16(-1)
			for j := 0; j < 16; j++ {
				b[4+j] = byte(j) | byte(15-j)<<4
			}
			return b
		}, func(i int) float32 {
			if i < 16 {
				return float32(i)*0.25 - 1
			}
			return float32(15-(i-16))*0.25 - 1
		}},
		{"Q5_0 high bits", tensor.Q5_0, func() []byte {
			b := make([]byte, 22)
			b[0], b[1] = h16(1)
			binary.LittleEndian.PutUint32(b[2:], 1|1<<31) // elements 0 and 31
			return b
		}, func(i int) float32 {
			if i == 0 || i == 31 {
				return 0
			}
			return -16
		}},
		{"Q5_1 all ones", tensor.Q5_1, func() []byte {
			b := make([]byte, 24)
			b[0], b[1] = h16(2)
			b[2], b[3] = h16(0.5)
			for j := 4; j < 24; j++ {
				b[j] = 0xff
			}
			return b
		}, func(int) float32 { return 31*2 + 0.5 }},
		{"Q8_0 ramp", tensor.Q8_0, func() []byte {
			b := make([]byte, 34)
			b[0], b[1] = h16(0.125)
			for j := 0; j < 32; j++ {
				b[2+j] = byte(int8(j*8 - 128))
			}
			return b
		}, func(i int) float32 { return float32(i - 16) }},
		{"Q8_K ramp", tensor.Q8_K, func() []byte {
			b := make([]byte, 292)
			binary.LittleEndian.PutUint32(b, math.Float32bits(0.5))
			for j := 0; j < 256; j++ {
				b[4+j] = byte(int8(j - 128))
			}
			return b
		}, func(i int) float32 { return float32(i-128) * 0.5 }},
		{"IQ4_NL grid", tensor.IQ4_NL, func() []byte {
			b := make([]byte, 18)
			b[0], b[1] = h16(2)
			for j := 0; j < 16; j++ {
				b[2+j] = byte(j) | byte(j)<<4
			}
			return b
		}, func(i int) float32 {
			grid := []float32{-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}
			return 2 * grid[i%16]
		}},
		{"Q6_K bits", tensor.Q6_K, func() []byte {
			// ql[128] qh[64] scales[16] d: element 0 takes ql[0] low and
			// qh[0] bits 0-1, element 32 ql[32] low and qh[0] bits 2-3,
			// element 64 ql[0] high and bits 4-5, element 96 ql[32] high
			// and bits 6-7; scales 0, 2, 4, 6 serve them.
			b := make([]byte, 210)
			b[0] = 0x21
			b[32] = 0x00
			b[128] = 0b11_10_01_00
			b[192], b[194], b[196], b[198] = 2, 0xff, 3, 1
			b[208], b[209] = h16(1)
			return b
		}, func(i int) float32 {
			switch i {
			case 0:
				return 2 * (1 - 32)
			case 32:
				return -1 * (16 - 32)
			case 64:
				return 3 * (34 - 32)
			case 96:
				return 1 * (48 - 32)
			}
			// Everything else is q = -32 times its group's scale:
			// groups of 16 use scales[i/16], all zero but 0, 2, 4, 6.
			switch i / 16 {
			case 0:
				return 2 * -32
			case 2:
				return -1 * -32
			case 4:
				return 3 * -32
			case 6:
				return 1 * -32
			}
			return 0
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := tc.block()
			got := make([]float32, tc.dtype.BlockElems())
			if err := tensor.ToFloat32(got, tc.dtype, src); err != nil {
				t.Fatal(err)
			}
			for i, g := range got {
				if w := tc.want(i); g != w {
					t.Fatalf("element %d = %v, want %v", i, g, w)
				}
			}
		})
	}
}

func TestDequantizeLengths(t *testing.T) {
	for _, dt := range dequantTypes {
		if !tensor.CanDecode(dt) {
			t.Errorf("%s is not registered", dt)
		}
		be, bb := int(dt.BlockElems()), int(dt.BlockBytes())
		for _, c := range []struct{ elems, bytes int }{
			{be, bb - 1}, {be, bb + 1}, {be + 1, bb}, {2 * be, bb},
		} {
			err := tensor.ToFloat32(make([]float32, c.elems), dt, make([]byte, c.bytes))
			if !errors.Is(err, tensor.ErrShape) {
				t.Errorf("%s: %d elements from %d bytes: %v, want ErrShape", dt, c.elems, c.bytes, err)
			}
		}
		if err := tensor.ToFloat32(nil, dt, nil); err != nil {
			t.Errorf("%s: empty input: %v", dt, err)
		}
	}
}

// TestQuantizeError checks the reconstruction error of the reference
// quantizers on Gaussian data: per block, |x - dequant(quant(x))| is at
// most half a step for Q8_0 and Q4_1 (one step for Q4_0, whose grid is
// lopsided) plus the effect of storing d and m as binary16.
func TestQuantizeError(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	const n = 32 * 64
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64() * math.Exp(rng.Float64()*4-2))
	}
	for _, tc := range []struct {
		dtype tensor.DType
		steps float64 // allowed error in steps of |d|
		nq    float64 // largest |q| multiplying d's rounding error
	}{
		{tensor.Q8_0, 0.5, 127},
		{tensor.Q4_0, 1, 8},
		{tensor.Q4_1, 0.5, 15},
	} {
		t.Run(tc.dtype.String(), func(t *testing.T) {
			bb := int(tc.dtype.BlockBytes())
			q := make([]byte, n/32*bb)
			if err := Quantize(q, tc.dtype, x); err != nil {
				t.Fatal(err)
			}
			y := make([]float32, n)
			if err := tensor.ToFloat32(y, tc.dtype, q); err != nil {
				t.Fatal(err)
			}
			for b := 0; b < n/32; b++ {
				d := math.Abs(float64(tensor.HalfToFloat(binary.LittleEndian.Uint16(q[b*bb:]))))
				var m float64
				if tc.dtype == tensor.Q4_1 {
					m = math.Abs(float64(tensor.HalfToFloat(binary.LittleEndian.Uint16(q[b*bb+2:]))))
				}
				// d and m are rounded to binary16: relative error 2^-11.
				bound := tc.steps*d + (tc.nq*d+m)*0x1p-11*1.01 + 1e-7
				for i := b * 32; i < b*32+32; i++ {
					if e := math.Abs(float64(x[i] - y[i])); e > bound {
						t.Fatalf("element %d: %v -> %v, error %g > %g (d %g)", i, x[i], y[i], e, bound, d)
					}
				}
			}
		})
	}
}

func TestQuantizeErrors(t *testing.T) {
	x := make([]float32, 32)
	if err := Quantize(make([]byte, 34), tensor.Q8_0, x); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		dst   int
		dtype tensor.DType
		src   []float32
		want  error
	}{
		{"unsupported", 144, tensor.Q4_K, make([]float32, 256), ErrUnsupportedType},
		{"float type", 64, tensor.F16, x, ErrUnsupportedType},
		{"short dst", 33, tensor.Q8_0, x, tensor.ErrShape},
		{"partial block", 34, tensor.Q8_0, x[:31], tensor.ErrShape},
		{"NaN", 18, tensor.Q4_0, append(make([]float32, 31), float32(math.NaN())), nil},
		{"Inf", 20, tensor.Q4_1, append(make([]float32, 31), float32(math.Inf(-1))), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Quantize(make([]byte, tc.dst), tc.dtype, tc.src)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// TestQuantizeEdges checks all-zero blocks and a subnormal scale, where
// 1/d overflows: the output must still decode to finite values.
func TestQuantizeEdges(t *testing.T) {
	for _, dt := range []tensor.DType{tensor.Q8_0, tensor.Q4_0, tensor.Q4_1} {
		for _, v := range []float32{0, 1e-40, -1e-44} {
			x := make([]float32, 32)
			x[3] = v
			q := make([]byte, dt.BlockBytes())
			if err := Quantize(q, dt, x); err != nil {
				t.Fatal(err)
			}
			y := make([]float32, 32)
			if err := tensor.ToFloat32(y, dt, q); err != nil {
				t.Fatal(err)
			}
			// binary16 cannot hold these magnitudes: d (and m) are
			// stored as zero and every value decodes to zero.
			for i, f := range y {
				if f != 0 {
					t.Errorf("%s with x[3]=%g: y[%d] = %g", dt, v, i, f)
				}
			}
		}
	}
}

func BenchmarkDequantize(b *testing.B) {
	const n = 1 << 20
	rng := rand.New(rand.NewPCG(1, 1))
	types := append([]tensor.DType{tensor.F16, tensor.BF16}, dequantTypes...)
	for _, dt := range types {
		src := randomTensor(rng, "x", dt, n).data
		dst := make([]float32, n)
		b.Run(dt.String(), func(b *testing.B) {
			b.SetBytes(4 * n) // float32 output
			b.ReportAllocs()
			for b.Loop() {
				if err := tensor.ToFloat32(dst, dt, src); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/elem")
		})
	}
}

func BenchmarkQuantize(b *testing.B) {
	const n = 1 << 20
	rng := rand.New(rand.NewPCG(2, 2))
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	for _, dt := range []tensor.DType{tensor.Q8_0, tensor.Q4_0, tensor.Q4_1} {
		dst := make([]byte, n/32*dt.BlockBytes())
		b.Run(dt.String(), func(b *testing.B) {
			b.SetBytes(4 * n) // float32 input
			for b.Loop() {
				if err := Quantize(dst, dt, x); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkParseKV decodes a tokenizer-sized key/value section (50,000
// strings and as many int32 token types).
func BenchmarkParseKV(b *testing.B) {
	tokens := make([]string, 50000)
	types := make([]int32, len(tokens))
	for i := range tokens {
		tokens[i] = "token" + string(rune('a'+i%26))
		types[i] = int32(i % 3)
	}
	raw, err := EncodeKV([]KV{
		{Key: "tokenizer.ggml.tokens", Type: TypeArray, Value: Array{TypeString, tokens}},
		{Key: "tokenizer.ggml.token_type", Type: TypeArray, Value: Array{TypeInt32, types}},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("decode", func(b *testing.B) {
		b.SetBytes(int64(len(raw)))
		for b.Loop() {
			if _, err := ParseKV(raw, 2); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("validate", func(b *testing.B) {
		b.SetBytes(int64(len(raw)))
		for b.Loop() {
			d := decoder{b: raw}
			if _, _, err := d.kvWalk(2, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}
