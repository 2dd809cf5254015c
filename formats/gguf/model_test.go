package gguf

import (
	"bufio"
	"crypto/sha256"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/tpconvert/tpconvert/tensor"
)

// TestRealModel checks a real GGUF file named by the environment variable
// TPCONVERT_GGUF_MODEL: it must open, every decodable tensor must decode to
// finite values, and writing it back must reproduce it byte for byte
// (compared by SHA-256 while streaming, without a second copy on disk).
func TestRealModel(t *testing.T) {
	path := os.Getenv("TPCONVERT_GGUF_MODEL")
	if path == "" {
		t.Skip("set TPCONVERT_GGUF_MODEL to a .gguf file to run this test")
	}
	start := time.Now()
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	opened := time.Since(start)

	kvs := r.KV()
	arch, _ := kvs.String("general.architecture")
	ts := r.Tensors()
	counts := map[tensor.DType]int{}
	for _, ti := range ts {
		counts[ti.DType]++
	}
	var types []string
	for d, n := range counts {
		types = append(types, d.String()+"×"+strconv.Itoa(n))
	}
	sort.Strings(types)
	g := r.Meta().GGUF
	t.Logf("%s: GGUF v%d, %s, %d keys (%d bytes), %d tensors %v, alignment %d, tail padding %d; Open took %v",
		path, g.Version, arch, len(kvs), len(g.KV), len(ts), types, g.Alignment, g.TailPad, opened)

	var buf []float32
	for i, ti := range ts {
		if !tensor.CanDecode(ti.DType) {
			continue
		}
		data, err := r.Bytes(i)
		if err != nil {
			t.Fatal(err)
		}
		n := int(ti.Elems())
		if cap(buf) < n {
			buf = make([]float32, n)
		}
		if err := tensor.ToFloat32(buf[:n], ti.DType, data); err != nil {
			t.Fatalf("%s: %v", ti.Name, err)
		}
		for k, v := range buf[:n] {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				t.Fatalf("%s[%d] = %v", ti.Name, k, v)
			}
		}
		r.Release(i)
	}

	if err := r.CheckReproducible(); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	orig := sha256.New()
	if _, err := io.Copy(orig, f); err != nil {
		t.Fatal(err)
	}
	out := sha256.New()
	bw := bufio.NewWriterSize(out, 1<<20)
	w, err := NewWriter(bw, g, r.InfoOrder(), ts)
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, w, r)
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	if a, b := orig.Sum(nil), out.Sum(nil); string(a) != string(b) {
		t.Fatalf("rewrite sha256 %x, original %x", b, a)
	} else {
		t.Logf("rewrite reproduces the file: sha256 %x", a)
	}
}
