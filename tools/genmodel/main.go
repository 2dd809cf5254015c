// Command genmodel writes the deterministic Llama-shaped checkpoints used by
// the tests, the demo and the benchmarks (see package fixtures/gen).
//
//	go run ./tools/genmodel -preset tiny -out fixtures/tiny-llama.safetensors
//	go run ./tools/genmodel -preset tiny -format gguf -out fixtures/tiny-llama.gguf
//	go run ./tools/genmodel -preset tinyllama -dtype f16 -out /tmp/tinyllama.safetensors
//	go run ./tools/genmodel -preset tinyllama -dtype f32 -out /tmp/big.safetensors   # 4.1 GiB
//	go run ./tools/genmodel -preset tiny -shard-size 1MB -out /tmp/ckpt/           # sharded checkout
package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/tpconvert/tpconvert/fixtures/gen"
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
	flag.Parse()
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
