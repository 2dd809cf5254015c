package gguf

import (
	"fmt"
	"math"

	"github.com/tpconvert/tpconvert/tensor"
)

// Quantize encodes src into dst as Q8_0, Q4_0 or Q4_1 with ggml's reference
// round-to-nearest quantizers (quantize_row_q8_0_ref, quantize_row_q4_0_ref
// and quantize_row_q4_1_ref in ggml-quants.c), bit for bit:
//
//	Q8_0: d = max|x|/127,          q = round(x/d) (half away from zero)
//	Q4_0: d = x[argmax|x|]/-8,     q = min(15, trunc(x/d + 8.5))
//	Q4_1: d = (max-min)/15, m=min, q = min(15, trunc((x-min)/d + 0.5))
//
// where x/d is computed as x*(1/d), and 1/d is 0 when d is 0. len(src) must
// be a multiple of 32 and dst must hold exactly the encoded blocks. Values
// must be finite.
func Quantize(dst []byte, t tensor.DType, src []float32) error {
	var f func(y []byte, x *[32]float32)
	switch t {
	case tensor.Q8_0:
		f = quantQ8_0
	case tensor.Q4_0:
		f = quantQ4_0
	case tensor.Q4_1:
		f = quantQ4_1
	default:
		return fmt.Errorf("%w: %s", ErrUnsupportedType, t)
	}
	bb := int(t.BlockBytes())
	if len(src)%32 != 0 || len(dst) != len(src)/32*bb {
		return fmt.Errorf("gguf: %w: %d bytes of %s for %d elements", tensor.ErrShape, len(dst), t, len(src))
	}
	for i, v := range src {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("gguf: cannot quantize non-finite value %v at element %d", v, i)
		}
	}
	for i := 0; i < len(src)/32; i++ {
		f(dst[i*bb:(i+1)*bb], (*[32]float32)(src[i*32:]))
	}
	return nil
}

func putHalf(b []byte, f float32) {
	h := tensor.FloatToHalf(f)
	b[0], b[1] = byte(h), byte(h>>8)
}

func inverse(d float32) float32 {
	if d == 0 {
		return 0
	}
	return 1 / d
}

// truncMax15 converts v to an integer by truncation toward zero and clamps
// it to [0, 15]. For finite input the callers keep v within [0, 17), except
// when 1/d overflows for a subnormal d; NaN gives 0.
func truncMax15(v float32) byte {
	if !(v > 0) {
		return 0
	}
	if v >= 15 {
		return 15
	}
	return byte(v)
}

// round127 rounds v half away from zero (C's roundf) and clamps the result
// to [-127, 127]; NaN gives 0. Finite input keeps v within the range except
// when 1/d overflows for a subnormal d.
func round127(v float32) byte {
	if v != v {
		return 0
	}
	r := math.Round(float64(v))
	return byte(int8(max(-127, min(127, r))))
}

func quantQ8_0(y []byte, x *[32]float32) {
	var amax float32
	for _, v := range x {
		if a := float32(math.Abs(float64(v))); a > amax {
			amax = a
		}
	}
	d := amax / 127
	id := inverse(d)
	putHalf(y, d)
	for j, v := range x {
		y[2+j] = round127(v * id)
	}
}

func quantQ4_0(y []byte, x *[32]float32) {
	var amax, vmax float32
	for _, v := range x {
		if a := float32(math.Abs(float64(v))); amax < a {
			amax, vmax = a, v
		}
	}
	d := vmax / -8
	id := inverse(d)
	putHalf(y, d)
	for j := 0; j < 16; j++ {
		lo := truncMax15(float32(x[j]*id) + 8.5)
		hi := truncMax15(float32(x[j+16]*id) + 8.5)
		y[2+j] = lo | hi<<4
	}
}

func quantQ4_1(y []byte, x *[32]float32) {
	vmin, vmax := float32(math.MaxFloat32), float32(-math.MaxFloat32)
	for _, v := range x {
		if v < vmin {
			vmin = v
		}
		if v > vmax {
			vmax = v
		}
	}
	d := (vmax - vmin) / 15
	id := inverse(d)
	putHalf(y, d)
	putHalf(y[2:], vmin)
	for j := 0; j < 16; j++ {
		lo := truncMax15(float32((x[j]-vmin)*id) + 0.5)
		hi := truncMax15(float32((x[j+16]-vmin)*id) + 0.5)
		y[4+j] = lo | hi<<4
	}
}
