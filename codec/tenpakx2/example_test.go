package tenpakx2_test

import (
	"bytes"
	"fmt"
	"math"

	"github.com/tpconvert/tpconvert/codec/tenpakx2"
	"github.com/tpconvert/tpconvert/tensor"
)

func Example() {
	// A 64×256 weight matrix coded with the Hadamard-rotated 3-bit
	// Lloyd–Max grid, one FP16 scale per 128 weights.
	const rows, cols = 64, 256
	info := tensor.Info{Name: "mlp.up_proj.weight", DType: tensor.BF16, Shape: []int64{rows, cols}}
	x := make([]float32, rows*cols)
	for i := range x {
		r, c := i/cols, i%cols
		x[i] = 0.02 * float32(math.Sin(float64(r*c%97)+0.3*float64(r)))
	}
	cfg, _ := tenpakx2.ParseConfig("normal:3/128")
	c := tenpakx2.NewPlanned(map[string]tenpakx2.Config{info.Name: cfg}, nil, "")
	var payload bytes.Buffer
	if err := c.Encode(&payload, info, x); err != nil {
		panic(err)
	}
	y := make([]float32, len(x))
	if err := c.Decode(y, payload.Bytes(), info, c.Version()); err != nil {
		panic(err)
	}
	var sig, noise float64
	for i := range x {
		sig += float64(x[i]) * float64(x[i])
		noise += float64(x[i]-y[i]) * float64(x[i]-y[i])
	}
	fmt.Println(c.TensorParams(info))
	fmt.Printf("%d bytes, %.3f bits/weight\n", payload.Len(), 8*float64(payload.Len())/rows/cols)
	fmt.Println("SQNR above 14 dB:", 10*math.Log10(sig/noise) > 14)
	// Output:
	// normal:3/128
	// 6456 bytes, 3.152 bits/weight
	// SQNR above 14 dB: true
}
