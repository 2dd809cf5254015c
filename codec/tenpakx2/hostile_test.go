package tenpakx2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/tensor"
)

// TestConstantGroups codes constant tensors with every grid: a constant
// group must come back (the uniform grid used to round its minimum up
// past the values, get a negative scale and code the group as zeros).
func TestConstantGroups(t *testing.T) {
	cfgs := []Config{
		{Grid: GridUniform, Bits: 4, Group: 32}, {Grid: GridUniform, Bits: 2, Group: 8}, {Grid: GridUniform, Bits: 4, Group: 32, S8: true},
		{Grid: GridSymmetric, Bits: 4, Group: 32}, {Grid: GridSymmetric, Bits: 2, Group: 32, S8: true},
		{Grid: GridNormal, Bits: 4, Group: 32}, {Grid: GridHalf, Bits: 16},
	}
	for _, cfg := range cfgs {
		for _, v := range []float32{0.3, -0.3, 1, 1e-3, -7.1, 100} {
			for _, sh := range [][]int64{{64, 1}, {1, 64}, {4, 64}} {
				t.Run(fmt.Sprintf("%s/%g/%v", cfg, v, sh), func(t *testing.T) {
					c := NewPlanned(map[string]Config{"w": cfg}, nil, "")
					info := tensor.Info{Name: "w", DType: tensor.F32, Shape: sh}
					x := make([]float32, sh[0]*sh[1])
					for i := range x {
						x[i] = v
					}
					var b bytes.Buffer
					if err := c.Encode(&b, info, x); err != nil {
						t.Fatal(err)
					}
					y := make([]float32, len(x))
					if err := c.Decode(y, b.Bytes(), info, Version); err != nil {
						t.Fatal(err)
					}
					var noise, sig float64
					for i := range x {
						d := float64(x[i] - y[i])
						noise, sig = noise+d*d, sig+float64(x[i])*float64(x[i])
					}
					// The Hadamard rotation turns a constant row into one
					// spike per block, which Gaussian levels code with an
					// error of 0.085; the others are FP16 rounding.
					bound := 0.01
					if cfg.Grid == GridNormal {
						bound = 0.1
					}
					if rel := math.Sqrt(noise / sig); rel > bound {
						t.Errorf("relative error %.4f (y[0] = %g)", rel, y[0])
					}
				})
			}
		}
	}
}

// TestDecodeRejectsNonFiniteParameters checks that a payload whose group
// scale or minimum is NaN or ±Inf is refused, not decoded to NaN weights.
func TestDecodeRejectsNonFiniteParameters(t *testing.T) {
	for _, cfg := range []Config{{Grid: GridUniform, Bits: 4, Group: 8}, {Grid: GridSymmetric, Bits: 4, Group: 8}, {Grid: GridNormal, Bits: 3, Group: 8}} {
		for _, bad := range []uint16{0x7e00, 0x7c00, 0xfc00} { // NaN, +Inf, -Inf
			for _, which := range []int{0, 1} { // scale, or (uniform) minimum
				if which == 1 && cfg.Grid != GridUniform {
					continue
				}
				c := NewPlanned(map[string]Config{"w": cfg}, nil, "")
				info := tensor.Info{Name: "w", DType: tensor.F32, Shape: []int64{2, 16}}
				x := make([]float32, 32)
				for i := range x {
					x[i] = float32(math.Sin(float64(i)))
				}
				var b bytes.Buffer
				if err := c.Encode(&b, info, x); err != nil {
					t.Fatal(err)
				}
				p := b.Bytes()
				off := HeaderSize
				if cfg.Grid == GridNormal {
					off += 4 << cfg.Bits
				}
				// Parameters: all scales (rows × groups), then all minimums.
				binary.LittleEndian.PutUint16(p[off+2*which*4:], bad)
				err := c.Decode(make([]float32, 32), p, info, Version)
				if !errors.Is(err, codec.ErrCorrupt) {
					t.Errorf("%s, parameter %d = %#04x: Decode returned %v, want codec.ErrCorrupt", cfg, which, bad, err)
				}
			}
		}
	}
}
