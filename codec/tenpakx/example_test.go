package tenpakx_test

import (
	"bytes"
	"fmt"
	"math"

	"github.com/tpconvert/tpconvert/codec"
	_ "github.com/tpconvert/tpconvert/codec/tenpakx"
	"github.com/tpconvert/tpconvert/tensor"
)

func Example() {
	// A 64×256 weight matrix: rows are output features, columns inputs.
	const rows, cols = 64, 256
	info := tensor.Info{Name: "mlp.up_proj.weight", DType: tensor.BF16, Shape: []int64{rows, cols}}
	x := make([]float32, rows*cols)
	for i := range x {
		r, c := i/cols, i%cols
		x[i] = 0.02 * float32(math.Sin(float64(r*c%97)+0.3*float64(r)))
	}

	c, err := codec.New("tenpak_x_v1", codec.Options{Rank: 8, Seed: 1})
	if err != nil {
		panic(err)
	}
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
	fmt.Println(c.Params())
	fmt.Printf("%d bytes, %.2f bits/weight\n", payload.Len(), 8*float64(payload.Len())/rows/cols)
	fmt.Println("SQNR above 30 dB:", 10*math.Log10(sig/noise) > 30)
	// Output:
	// rank=8 group=row seed=1
	// 19727 bytes, 9.63 bits/weight
	// SQNR above 30 dB: true
}
