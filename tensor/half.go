package tensor

import (
	"math"

	"github.com/x448/float16"
)

// HalfToFloat converts IEEE 754 binary16 bits to float32 (exact).
func HalfToFloat(h uint16) float32 { return halfTable[h] }

// FloatToHalf converts f to IEEE 754 binary16 bits, rounding to nearest
// even; values beyond the binary16 range become ±Inf and every NaN becomes
// the quiet NaN 0x7e00 (with f's sign).
//
// It is the bias-and-shift method: add the exponent rebias and the rounding
// bias to the float32 bits and keep the top bits, and let one float32
// addition do the rounding of results that are subnormal in binary16. It is
// several times faster than github.com/x448/float16's Fromfloat32, which
// dominated the profile of decoding to F16; tests check that both agree on
// every non-NaN input they try.
func FloatToHalf(f float32) uint16 {
	const (
		f16Max      = (127 + 16) << 23                   // 65536: first float32 that overflows binary16
		f32Inf      = 255 << 23                          // +Inf bits
		minNormal   = 113 << 23                          // 2^-14: smallest normal binary16
		denormMagic = ((127 - 15) + (23 - 10) + 1) << 23 // 0.5 in the subnormal ulp
	)
	u := math.Float32bits(f)
	sign := uint16(u>>16) & 0x8000
	u &^= 0x80000000
	switch {
	case u >= f16Max:
		if u > f32Inf {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case u < minNormal:
		// Subnormal or zero: adding the magic float aligns the 10 mantissa
		// bits at the bottom and rounds to nearest even.
		v := math.Float32bits(math.Float32frombits(u)+math.Float32frombits(denormMagic)) - denormMagic
		return sign | uint16(v)
	}
	odd := (u >> 13) & 1
	u = u - (127-15)<<23 + 0xfff + odd // rebias the exponent, round half to even
	return sign | uint16(u>>13)
}

// RoundHalf returns f rounded to the nearest binary16 value, as float32.
func RoundHalf(f float32) float32 { return halfTable[FloatToHalf(f)] }

// FloatToBF16 converts f to bfloat16 bits, rounding to nearest even (NaN stays NaN).
func FloatToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if f != f {
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// halfTable holds all 65536 binary16 values as float32: a table lookup is
// several times faster than converting bit by bit in the decode loops.
var halfTable = func() *[65536]float32 {
	var t [65536]float32
	for i := range t {
		t[i] = float16.Frombits(uint16(i)).Float32()
	}
	return &t
}()
