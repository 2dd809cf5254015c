// Command genmodel writes the deterministic Llama-shaped checkpoints used by
// the tests, the demo and the benchmarks (see package fixtures/gen).
//
//	go run ./tools/genmodel -preset tiny -out fixtures/tiny-llama.safetensors
//	go run ./tools/genmodel -preset tiny -format gguf -out fixtures/tiny-llama.gguf
//	go run ./tools/genmodel -preset tinyllama -dtype f16 -out /tmp/tinyllama.safetensors
//	go run ./tools/genmodel -preset tinyllama -dtype f32 -out /tmp/big.safetensors   # 4.1 GiB
//	go run ./tools/genmodel -preset tiny -shard-size 1MB -out /tmp/ckpt/           # sharded checkout
//	go run ./tools/genmodel -one 65536x32768 -dtype f32 -out /tmp/one.safetensors   # one 8 GiB tensor
package main

import (
	"bufio"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"

	"github.com/tpconvert/tpconvert/fixtures/gen"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/formats/safetensors"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/tensor"

	_ "github.com/tpconvert/tpconvert/formats/gguf" // dequantizers
)

func main() {
	preset := flag.String("preset", "tiny", "model shape: "+strings.Join(presetNames(), ", "))
	format := flag.String("format", "safetensors", "safetensors or gguf")
	dtype := flag.String("dtype", "bf16", "element type for safetensors: f32, f16, bf16")
	out := flag.String("out", "", "output file (or directory with -shard-size)")
	shard := flag.Int64("shard-size", 0, "write a sharded checkout directory with shards of at most this many bytes")
	seed := flag.Uint64("seed", 1, "generator seed")
	one := flag.String("one", "", "instead of a preset, one ROWSxCOLS MLP matrix (written in row chunks, in little memory)")
	flag.Parse()
	if *one != "" {
		if err := writeOne(*one, *dtype, *out, *seed); err != nil {
			fmt.Fprintln(os.Stderr, "genmodel:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*preset, *format, *dtype, *out, *shard, *seed); err != nil {
		fmt.Fprintln(os.Stderr, "genmodel:", err)
		os.Exit(1)
	}
}

func presetNames() []string {
	var n []string
	for k := range gen.Presets {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func run(preset, format, dtype, out string, shard int64, seed uint64) error {
	c, ok := gen.Presets[preset]
	if !ok {
		return fmt.Errorf("unknown preset %q", preset)
	}
	if out == "" {
		return fmt.Errorf("-out is required")
	}
	dt, err := tensor.ParseDType(strings.ToUpper(dtype))
	if err != nil || !dt.IsFloat() {
		return fmt.Errorf("-dtype: want f32, f16 or bf16")
	}
	switch {
	case format == "gguf":
		return gen.WriteGGUF(out, c, seed)
	case format != "safetensors":
		return fmt.Errorf("-format: want safetensors or gguf")
	case shard > 0:
		return gen.WriteCheckout(out, c, dt, seed, shard)
	}
	return gen.WriteSafetensors(out, c, dt, seed)
}

// writeOne writes a safetensors file holding one rows×cols matrix named
// like an MLP projection, of Gaussian values (σ 0.02, one stream per
// row), a chunk of rows at a time.
func writeOne(shape, dtype, out string, seed uint64) error {
	var rows, cols int64
	if _, err := fmt.Sscanf(shape, "%dx%d", &rows, &cols); err != nil || rows <= 0 || cols <= 0 {
		return fmt.Errorf("-one: want ROWSxCOLS, got %q", shape)
	}
	dt, err := tensor.ParseDType(strings.ToUpper(dtype))
	if err != nil || !dt.IsFloat() || out == "" {
		return fmt.Errorf("-one needs -dtype f32, f16 or bf16 and -out")
	}
	t := tensor.Info{Name: "model.layers.0.mlp.up_proj.weight", DType: dt, Shape: []int64{rows, cols}}
	if t.Size, err = tensor.ByteSize(dt, t.Shape); err != nil {
		return err
	}
	f, err := atomicfile.Create(out, true)
	if err != nil {
		return err
	}
	defer f.Abort()
	bw := bufio.NewWriterSize(f, 1<<20)
	w, err := safetensors.NewWriter(bw, []tensor.Info{t}, &formats.FileMeta{Metadata: []byte(`{"format":"pt"}`)})
	if err != nil {
		return err
	}
	per := max(1, (64<<20)/(4*cols))
	x := make([]float32, per*cols)
	b := make([]byte, t.Size/rows*per)
	for r := int64(0); r < rows; r += per {
		n := min(per, rows-r)
		for i := int64(0); i < n; i++ {
			g := rand.New(rand.NewPCG(seed, uint64(r+i)))
			for c := range x[i*cols : (i+1)*cols] {
				x[i*cols+int64(c)] = float32(0.02 * g.NormFloat64())
			}
		}
		k := t.Size / rows * n
		if err := tensor.FromFloat32(b[:k], dt, x[:n*cols]); err != nil {
			return err
		}
		if err := w.WriteTensorPart(t, r*(t.Size/rows), b[:k]); err != nil {
			return err
		}
	}
	return f.Finish(w.Close, bw.Flush)
}
