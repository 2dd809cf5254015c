package tenpakx

import (
	"bytes"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/tensor"
)

// TestEncodeHugeValuesReturns checks that matrices holding values near
// float32's limit (on which gonum's SVD never converged) and beyond FP16
// are refused with codec.ErrUnsupported promptly, and that a moderately
// large matrix is still coded.
func TestEncodeHugeValuesReturns(t *testing.T) {
	c, err := New(codec.Options{Rank: 4, GroupSize: 8})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		v       float32
		outlier bool // one element v among small values, else all ±v
		ok      bool
	}{
		{"±3.4e38", 3.4e38, false, false},
		{"one 3.4e38 among small values", 3.4e38, true, false},
		{"one MaxFloat32 among small values", math.MaxFloat32, true, false},
		{"±MaxFloat32", math.MaxFloat32, false, false},
		{"±1e6", 1e6, false, false},
		{"±70000", 70000, false, false},
		{"±1000", 1000, false, true},
		{"one 1000 among small values", 1000, true, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			x := make([]float32, 8*32)
			for i := range x {
				x[i] = tc.v * float32(1-2*((i*7+i/32)%2))
				if tc.outlier {
					x[i] = float32(math.Sin(float64(i))) * 0.1
				}
			}
			if tc.outlier {
				x[5] = tc.v
			}
			info := tensor.Info{Name: "w", DType: tensor.F32, Shape: []int64{8, 32}}
			done := make(chan error, 1)
			go func() { done <- c.Encode(&bytes.Buffer{}, info, x) }()
			select {
			case err := <-done:
				if tc.ok && err != nil {
					t.Errorf("Encode: %v", err)
				}
				if !tc.ok && !errors.Is(err, codec.ErrUnsupported) {
					t.Errorf("Encode: %v, want codec.ErrUnsupported", err)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("Encode did not return in 30s")
			}
		})
	}
}
