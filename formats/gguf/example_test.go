package gguf_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/formats/gguf"
	"github.com/tpconvert/tpconvert/tensor"
)

// Example writes a small GGUF file with one Q8_0 matrix and reads it back.
func Example() {
	kv, err := gguf.EncodeKV([]gguf.KV{
		{Key: "general.architecture", Type: gguf.TypeString, Value: "llama"},
		{Key: "llama.block_count", Type: gguf.TypeUint32, Value: uint32(1)},
		{Key: "tokenizer.ggml.tokens", Type: gguf.TypeArray, Value: gguf.Array{Elem: gguf.TypeString, Values: []string{"<s>", "a", "b"}}},
	})
	if err != nil {
		log.Fatal(err)
	}
	// A 2x32 matrix: Shape is [rows, cols]; the file stores ne = [32, 2].
	w := tensor.Info{Name: "blk.0.attn_q.weight", DType: tensor.Q8_0, Shape: []int64{2, 32}}
	x := make([]float32, 64)
	for i := range x {
		x[i] = float32(i-32) / 8
	}
	q := make([]byte, 2*34)
	if err := gguf.Quantize(q, tensor.Q8_0, x); err != nil {
		log.Fatal(err)
	}

	path := filepath.Join(os.TempDir(), "example.gguf")
	f, err := os.Create(path)
	if err != nil {
		log.Fatal(err)
	}
	defer os.Remove(path)
	meta := &formats.GGUFMeta{Version: 3, KVCount: 3, KV: kv, Alignment: gguf.DefaultAlignment}
	gw, err := gguf.NewWriter(f, meta, nil, []tensor.Info{w})
	if err != nil {
		log.Fatal(err)
	}
	if err := gw.WriteTensor(w, q); err != nil {
		log.Fatal(err)
	}
	if err := gw.Close(); err != nil {
		log.Fatal(err)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}

	r, err := gguf.Open(path)
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	for _, kv := range r.KV() {
		fmt.Println(kv)
	}
	for i, t := range r.Tensors() {
		data, _ := r.Bytes(i)
		y := make([]float32, t.Elems())
		if err := tensor.ToFloat32(y, t.DType, data); err != nil {
			log.Fatal(err)
		}
		fmt.Println(t.Name, t.DType, t.Shape, t.Size, "bytes; first values", y[:3])
	}
	// Output:
	// general.architecture (string) = "llama"
	// llama.block_count (uint32) = 1
	// tokenizer.ggml.tokens ([3]string) = ["<s>", "a", "b"]
	// blk.0.attn_q.weight Q8_0 [2 32] 68 bytes; first values [-3.9997559 -3.8737793 -3.7478027]
}
