package tensor

import (
	"math"

	"github.com/x448/float16"
)

// HalfToFloat converts IEEE 754 binary16 bits to float32 (exact).
func HalfToFloat(h uint16) float32 { return halfTable[h] }

// FloatToHalf converts f to IEEE 754 binary16 bits, rounding to nearest even.
func FloatToHalf(f float32) uint16 { return uint16(float16.Fromfloat32(f)) }

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
