package gguf

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/tpconvert/tpconvert/tensor"
)

// The files in testdata/golden are written by tools/gguf_golden.py with the
// reference gguf Python package (see that script to regenerate them).

var goldenDir = filepath.Join("testdata", "golden")

func readGolden(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(goldenDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func float32s(b []byte) []float32 {
	v := make([]float32, len(b)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

// TestGoldenDequantize decodes random blocks of every supported type and
// compares with gguf.quants.dequantize. Criterion: within each block,
// |got - want| <= 1e-6 * max(1, S) for every element, where S is the
// largest |want| in that block; NaN must match NaN (plain float types
// only). The implementation follows ggml's reference arithmetic, so the
// observed difference is 0; the bound only allows for a different
// evaluation order.
func TestGoldenDequantize(t *testing.T) {
	types := []tensor.DType{
		tensor.F32, tensor.F16, tensor.BF16,
		tensor.Q4_0, tensor.Q4_1, tensor.Q5_0, tensor.Q5_1, tensor.Q8_0,
		tensor.Q2_K, tensor.Q3_K, tensor.Q4_K, tensor.Q5_K, tensor.Q6_K,
		tensor.IQ4_NL,
	}
	for _, dt := range types {
		t.Run(dt.String(), func(t *testing.T) {
			src := readGolden(t, dt.String()+".bin")
			want := float32s(readGolden(t, dt.String()+".f32"))
			if len(want) == 0 {
				t.Fatal("empty golden file")
			}
			got := make([]float32, len(want))
			if err := tensor.ToFloat32(got, dt, src); err != nil {
				t.Fatal(err)
			}
			be := int(dt.BlockElems())
			if be == 1 {
				be = len(want) // plain types: one scale for the whole file
			}
			var maxDiff float64
			for b := 0; b < len(want); b += be {
				var scale float64
				for _, w := range want[b : b+be] {
					if !math.IsNaN(float64(w)) && !math.IsInf(float64(w), 0) {
						scale = max(scale, math.Abs(float64(w)))
					}
				}
				tol := 1e-6 * max(1, scale)
				for i := b; i < b+be; i++ {
					g, w := float64(got[i]), float64(want[i])
					switch {
					case math.IsNaN(w) || math.IsNaN(g):
						if !math.IsNaN(w) || !math.IsNaN(g) {
							t.Fatalf("element %d: got %v, want %v", i, g, w)
						}
					case math.IsInf(w, 0) || math.IsInf(g, 0):
						if g != w {
							t.Fatalf("element %d: got %v, want %v", i, g, w)
						}
					default:
						diff := math.Abs(g - w)
						maxDiff = max(maxDiff, diff)
						if diff > tol {
							t.Fatalf("element %d (block %d): got %v, want %v (|diff| %g > %g)", i, i/be, g, w, diff, tol)
						}
					}
				}
			}
			t.Logf("%d elements, max |diff| %g", len(want), maxDiff)
		})
	}
}

// TestGoldenQuantize checks that Quantize produces exactly the bytes of
// gguf.quants.quantize, which matches ggml's reference quantizers.
func TestGoldenQuantize(t *testing.T) {
	for _, dt := range []tensor.DType{tensor.Q8_0, tensor.Q4_0, tensor.Q4_1} {
		t.Run(dt.String(), func(t *testing.T) {
			src := float32s(readGolden(t, "quant_"+dt.String()+".in.f32"))
			want := readGolden(t, "quant_"+dt.String()+".bin")
			got := make([]byte, len(want))
			if err := Quantize(got, dt, src); err != nil {
				t.Fatal(err)
			}
			bb := int(dt.BlockBytes())
			for b := 0; b < len(want); b += bb {
				if !bytes.Equal(got[b:b+bb], want[b:b+bb]) {
					t.Fatalf("block %d:\ngot  %x\nwant %x", b/bb, got[b:b+bb], want[b:b+bb])
				}
			}
		})
	}
}

// sizeExceptions lists where gguf.GGML_QUANT_SIZES (gguf 0.19.0) disagrees
// with ggml itself, with the block size ggml-common.h asserts. Q8_1's
// block_q8_1 holds two ggml_half (d, s) and 32 int8:
// static_assert(sizeof(block_q8_1) == 2*sizeof(ggml_half) + QK8_1); the
// Python table still gives the size of an older layout with float d and s.
var sizeExceptions = map[string][2]int64{"Q8_1": {32, 36}}

// TestGoldenSizes compares the tensor package's block table with
// gguf.GGML_QUANT_SIZES. Types that only one side knows are logged.
func TestGoldenSizes(t *testing.T) {
	var table map[string]struct {
		Type       uint32 `json:"type"`
		BlockElems int64  `json:"block_elems"`
		BlockBytes int64  `json:"block_bytes"`
	}
	if err := json.Unmarshal(readGolden(t, "sizes.json"), &table); err != nil {
		t.Fatal(err)
	}
	if len(table) < 20 {
		t.Fatalf("sizes.json lists only %d types", len(table))
	}
	checked := 0
	for name, s := range table {
		d, err := tensor.FromGGMLType(s.Type)
		if err != nil {
			t.Logf("ggml type %d (%s) is unknown to package tensor", s.Type, name)
			continue
		}
		checked++
		if d.String() != name {
			t.Errorf("ggml type %d: tensor calls it %s, gguf calls it %s", s.Type, d, name)
		}
		if ex, ok := sizeExceptions[name]; ok {
			t.Logf("%s: gguf says %d elements in %d bytes; ggml-common.h (and tensor) %d in %d", name, s.BlockElems, s.BlockBytes, ex[0], ex[1])
			s.BlockElems, s.BlockBytes = ex[0], ex[1]
		}
		if d.BlockElems() != s.BlockElems || d.BlockBytes() != s.BlockBytes {
			t.Errorf("%s: tensor has %d elements in %d bytes per block, gguf %d in %d",
				name, d.BlockElems(), d.BlockBytes(), s.BlockElems, s.BlockBytes)
		}
	}
	t.Logf("%d of %d types checked", checked, len(table))
}

type goldenValue struct {
	Type  string          `json:"type"`
	Elem  string          `json:"elem"`
	Value json.RawMessage `json:"value"`
}

type goldenFile struct {
	Version   uint32 `json:"version"`
	Alignment uint64 `json:"alignment"`
	KV        []struct {
		Key string `json:"key"`
		goldenValue
	} `json:"kv"`
	Tensors []struct {
		Name   string    `json:"name"`
		Type   string    `json:"type"`
		Shape  []int64   `json:"shape"`
		SHA256 string    `json:"sha256"`
		Values []float64 `json:"values"`
	} `json:"tensors"`
}

// TestGoldenSmallFile reads a file written by gguf.GGUFWriter and checks
// every key, tensor and value against the writer's description, then writes
// it back and compares bytes.
func TestGoldenSmallFile(t *testing.T) {
	var want goldenFile
	if err := json.Unmarshal(readGolden(t, "small.json"), &want); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(goldenDir, "small.gguf")
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	g := r.Meta().GGUF
	if g.Version != want.Version || g.Alignment != want.Alignment {
		t.Errorf("version %d alignment %d, want %d %d", g.Version, g.Alignment, want.Version, want.Alignment)
	}
	kvs := r.KV()
	if len(kvs) != len(want.KV) {
		t.Fatalf("%d keys, want %d", len(kvs), len(want.KV))
	}
	for i, w := range want.KV {
		if kvs[i].Key != w.Key {
			t.Fatalf("key %d is %q, want %q", i, kvs[i].Key, w.Key)
		}
		if err := matchValue(kvs[i].Type, kvs[i].Value, w.goldenValue); err != nil {
			t.Errorf("key %q: %v", w.Key, err)
		}
	}

	ts := r.Tensors()
	if len(ts) != len(want.Tensors) {
		t.Fatalf("%d tensors, want %d", len(ts), len(want.Tensors))
	}
	for i, w := range want.Tensors {
		ti := ts[i]
		if ti.Name != w.Name || ti.DType.String() != w.Type || fmt.Sprint(ti.Shape) != fmt.Sprint(w.Shape) {
			t.Errorf("tensor %d is %s %s %v, want %s %s %v", i, ti.Name, ti.DType, ti.Shape, w.Name, w.Type, w.Shape)
			continue
		}
		data, err := r.Bytes(i)
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != w.SHA256 {
			t.Errorf("%s: data sha256 %x, want %s", w.Name, sum, w.SHA256)
		}
		if w.Values == nil {
			continue
		}
		got := make([]float32, ti.Elems())
		if err := tensor.ToFloat32(got, ti.DType, data); err != nil {
			t.Fatalf("%s: %v", w.Name, err)
		}
		if len(got) != len(w.Values) {
			t.Fatalf("%s: %d values, want %d", w.Name, len(got), len(w.Values))
		}
		for k := range got {
			if float64(got[k]) != w.Values[k] {
				t.Fatalf("%s[%d] = %v, want %v", w.Name, k, got[k], w.Values[k])
			}
		}
	}

	if err := r.CheckReproducible(); err != nil {
		t.Errorf("CheckReproducible: %v", err)
	}
	orig, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if out := rewrite(t, r); !bytes.Equal(out, orig) {
		t.Errorf("rewrite differs from the original (%d bytes, want %d) at byte %d", len(out), len(orig), firstDiff(out, orig))
	}
}

// matchValue compares a decoded value with its JSON description.
func matchValue(typ ValueType, v any, w goldenValue) error {
	if got := typ.String(); !strings.EqualFold(got, w.Type) {
		return fmt.Errorf("type %s, want %s", got, w.Type)
	}
	if typ == TypeArray {
		a, ok := v.(Array)
		if !ok {
			return fmt.Errorf("value %T, want Array", v)
		}
		if !strings.EqualFold(a.Elem.String(), w.Elem) {
			return fmt.Errorf("element type %s, want %s", a.Elem, w.Elem)
		}
		var items []goldenValue
		if err := json.Unmarshal(w.Value, &items); err != nil {
			return err
		}
		if a.Len() != len(items) {
			return fmt.Errorf("%d elements, want %d", a.Len(), len(items))
		}
		for i, item := range items {
			if err := matchValue(a.Elem, elem(a, i), item); err != nil {
				return fmt.Errorf("element %d: %w", i, err)
			}
		}
		return nil
	}
	var got string
	switch x := v.(type) {
	case float32:
		got = strconv.FormatFloat(float64(x), 'g', -1, 64)
	case float64:
		got = strconv.FormatFloat(x, 'g', -1, 64)
	case string:
		b, _ := json.Marshal(x)
		got = string(b)
	default:
		got = fmt.Sprint(x)
	}
	want := string(w.Value)
	if f, err := strconv.ParseFloat(want, 64); err == nil && (typ == TypeFloat32 || typ == TypeFloat64) {
		want = strconv.FormatFloat(f, 'g', -1, 64)
	}
	if typ == TypeString {
		var s string
		if err := json.Unmarshal(w.Value, &s); err != nil {
			return err
		}
		b, _ := json.Marshal(s)
		want = string(b)
	}
	if got != want {
		return fmt.Errorf("value %s, want %s", got, want)
	}
	return nil
}

// rewrite writes r's tensors back through a Writer and returns the bytes.
func rewrite(t testing.TB, r *Reader) []byte {
	t.Helper()
	var buf bytes.Buffer
	ts := r.Tensors()
	w, err := NewWriter(&buf, r.Meta().GGUF, r.InfoOrder(), ts)
	if err != nil {
		t.Fatal(err)
	}
	writeAll(t, w, r)
	if int64(buf.Len()) != w.Size() {
		t.Fatalf("wrote %d bytes, Size says %d", buf.Len(), w.Size())
	}
	return buf.Bytes()
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
