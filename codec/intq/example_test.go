package intq_test

import (
	"bytes"
	"fmt"

	"github.com/tpconvert/tpconvert/codec"
	_ "github.com/tpconvert/tpconvert/codec/intq"
	"github.com/tpconvert/tpconvert/tensor"
)

func Example() {
	info := tensor.Info{Name: "w", DType: tensor.F32, Shape: []int64{2, 4}}
	x := []float32{0, 5, 10, 15, -8, -4, 0, 7}
	c, err := codec.New("int4", codec.Options{GroupSize: 4})
	if err != nil {
		panic(err)
	}
	var buf bytes.Buffer
	if err := c.Encode(&buf, info, x); err != nil {
		panic(err)
	}
	y := make([]float32, len(x))
	if err := c.Decode(y, buf.Bytes(), info, c.Version()); err != nil {
		panic(err)
	}
	fmt.Println(c.Name(), c.Params(), buf.Len(), "bytes")
	fmt.Println(y)
	// Output:
	// int4 group=4 25 bytes
	// [0 5 10 15 -8 -4 0 7]
}
