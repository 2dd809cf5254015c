package gguf

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/tensor"
)

// enc appends little-endian GGUF fields; tests use it to build files by
// hand, independently of the package's encoder and writer.
type enc struct{ b []byte }

func (e *enc) u8(v uint8) *enc   { e.b = append(e.b, v); return e }
func (e *enc) u16(v uint16) *enc { e.b = binary.LittleEndian.AppendUint16(e.b, v); return e }
func (e *enc) u32(v uint32) *enc { e.b = binary.LittleEndian.AppendUint32(e.b, v); return e }
func (e *enc) u64(v uint64) *enc { e.b = binary.LittleEndian.AppendUint64(e.b, v); return e }
func (e *enc) f32(v float32) *enc {
	return e.u32(math.Float32bits(v))
}
func (e *enc) f64(v float64) *enc { return e.u64(math.Float64bits(v)) }
func (e *enc) str(s string) *enc  { e.u64(uint64(len(s))); e.b = append(e.b, s...); return e }

// key appends a key and its value type.
func (e *enc) key(k string, t ValueType) *enc { return e.str(k).u32(uint32(t)) }

// handKV returns a key/value section with every value type, nested arrays
// and empty arrays, built byte by byte, and its decoded form.
func handKV() ([]byte, Metadata) {
	var e enc
	var m Metadata
	add := func(k string, t ValueType, v any) { m = append(m, KV{Key: k, Type: t, Value: v}) }

	e.key("general.architecture", TypeString).str("llama")
	add("general.architecture", TypeString, "llama")
	e.key("t.u8", TypeUint8).u8(250)
	add("t.u8", TypeUint8, uint8(250))
	e.key("t.i8", TypeInt8).u8(0x80)
	add("t.i8", TypeInt8, int8(-128))
	e.key("t.u16", TypeUint16).u16(65535)
	add("t.u16", TypeUint16, uint16(65535))
	e.key("t.i16", TypeInt16).u16(0xfffe)
	add("t.i16", TypeInt16, int16(-2))
	e.key("t.u32", TypeUint32).u32(0xdeadbeef)
	add("t.u32", TypeUint32, uint32(0xdeadbeef))
	e.key("t.i32", TypeInt32).u32(0x80000000)
	add("t.i32", TypeInt32, int32(math.MinInt32))
	e.key("t.f32", TypeFloat32).f32(-0.125)
	add("t.f32", TypeFloat32, float32(-0.125))
	e.key("t.bool", TypeBool).u8(1)
	add("t.bool", TypeBool, true)
	e.key("t.string", TypeString).str("")
	add("t.string", TypeString, "")
	e.key("t.u64", TypeUint64).u64(math.MaxUint64)
	add("t.u64", TypeUint64, uint64(math.MaxUint64))
	e.key("t.i64", TypeInt64).u64(1 << 63)
	add("t.i64", TypeInt64, int64(math.MinInt64))
	e.key("t.f64", TypeFloat64).f64(1e300)
	add("t.f64", TypeFloat64, 1e300)
	e.key("t.arr.u8", TypeArray).u32(uint32(TypeUint8)).u64(3).u8(1).u8(2).u8(3)
	add("t.arr.u8", TypeArray, Array{TypeUint8, []uint8{1, 2, 3}})
	e.key("t.arr.i16", TypeArray).u32(uint32(TypeInt16)).u64(2).u16(0xffff).u16(7)
	add("t.arr.i16", TypeArray, Array{TypeInt16, []int16{-1, 7}})
	e.key("t.arr.f64", TypeArray).u32(uint32(TypeFloat64)).u64(1).f64(-0.5)
	add("t.arr.f64", TypeArray, Array{TypeFloat64, []float64{-0.5}})
	e.key("t.arr.bool", TypeArray).u32(uint32(TypeBool)).u64(2).u8(0).u8(1)
	add("t.arr.bool", TypeArray, Array{TypeBool, []bool{false, true}})
	e.key("t.arr.str", TypeArray).u32(uint32(TypeString)).u64(3).str("a").str("").str("ü")
	add("t.arr.str", TypeArray, Array{TypeString, []string{"a", "", "ü"}})
	e.key("t.arr.empty", TypeArray).u32(uint32(TypeInt64)).u64(0)
	add("t.arr.empty", TypeArray, Array{TypeInt64, []int64{}})
	// [[1, 2], []] of uint32, and [[["x"]]] of strings.
	e.key("t.arr.nested", TypeArray).u32(uint32(TypeArray)).u64(2).
		u32(uint32(TypeUint32)).u64(2).u32(1).u32(2).
		u32(uint32(TypeUint32)).u64(0)
	add("t.arr.nested", TypeArray, Array{TypeArray, []Array{{TypeUint32, []uint32{1, 2}}, {TypeUint32, []uint32{}}}})
	e.key("t.arr.deep", TypeArray).u32(uint32(TypeArray)).u64(1).
		u32(uint32(TypeArray)).u64(1).
		u32(uint32(TypeString)).u64(1).str("x")
	add("t.arr.deep", TypeArray, Array{TypeArray, []Array{{TypeArray, []Array{{TypeString, []string{"x"}}}}}})
	for _, x := range []struct {
		k string
		t ValueType
		v any
	}{
		{"t.arr.i8", TypeInt8, []int8{-1}},
		{"t.arr.u16", TypeUint16, []uint16{9}},
		{"t.arr.u32", TypeUint32, []uint32{10}},
		{"t.arr.i32", TypeInt32, []int32{-11}},
		{"t.arr.f32", TypeFloat32, []float32{2.5}},
		{"t.arr.u64", TypeUint64, []uint64{12}},
	} {
		e.key(x.k, TypeArray).u32(uint32(x.t)).u64(1)
		switch v := x.v.(type) {
		case []int8:
			e.u8(uint8(v[0]))
		case []uint16:
			e.u16(v[0])
		case []uint32:
			e.u32(v[0])
		case []int32:
			e.u32(uint32(v[0]))
		case []float32:
			e.f32(v[0])
		case []uint64:
			e.u64(v[0])
		}
		add(x.k, TypeArray, Array{x.t, x.v})
	}
	return e.b, m
}

// rawTensor is a tensor info as stored: ne innermost first, offset relative
// to the data section.
type rawTensor struct {
	name string
	ne   []uint64
	typ  uint32
	off  uint64
}

// rawFile assembles a GGUF file byte by byte: header, kv (nKV pairs),
// tensor infos, zero padding to align, then data.
func rawFile(version uint32, nKV uint64, kv []byte, ts []rawTensor, align int, data []byte) []byte {
	var e enc
	e.b = append(e.b, "GGUF"...)
	e.u32(version).u64(uint64(len(ts))).u64(nKV)
	e.b = append(e.b, kv...)
	for _, t := range ts {
		e.str(t.name).u32(uint32(len(t.ne)))
		for _, n := range t.ne {
			e.u64(n)
		}
		e.u32(t.typ).u64(t.off)
	}
	for len(e.b)%align != 0 {
		e.b = append(e.b, 0)
	}
	return append(e.b, data...)
}

// testTensor is a tensor to write with buildFile.
type testTensor struct {
	name  string
	dtype tensor.DType
	shape []int64
	data  []byte
}

func (tt testTensor) info() tensor.Info {
	return tensor.Info{Name: tt.name, DType: tt.dtype, Shape: tt.shape}
}

// randomTensor returns a tensor with valid random data: float types hold
// random normal values, Q4_0/Q4_1/Q8_0 are quantized from them, other
// block types get random bytes with sane binary16 scales.
func randomTensor(rng *rand.Rand, name string, dt tensor.DType, shape ...int64) testTensor {
	n, _ := tensor.NumElems(shape)
	size, err := tensor.ByteSize(dt, shape)
	if err != nil {
		panic(err)
	}
	data := make([]byte, size)
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	switch {
	case dt.IsFloat():
		if err := tensor.FromFloat32(data, dt, x); err != nil {
			panic(err)
		}
	case dt == tensor.Q4_0 || dt == tensor.Q4_1 || dt == tensor.Q8_0:
		if err := Quantize(data, dt, x); err != nil {
			panic(err)
		}
	default:
		for i := range data {
			data[i] = byte(rng.IntN(256))
		}
		// Scale fields (binary16, or float32 for Q8_K) start at even
		// offsets in every ggml block layout, so masking every odd byte
		// with 0x3b (sign and top exponent bit clear) keeps them finite.
		for i := 1; i < len(data); i += 2 {
			data[i] &= 0x3b
		}
	}
	return testTensor{name: name, dtype: dt, shape: shape, data: data}
}

// buildFile writes a GGUF file with the package's Writer.
func buildFile(t testing.TB, version uint32, kv []byte, nKV uint64, align uint64, tailPad int64, infoOrder []string, ts []testTensor) []byte {
	t.Helper()
	infos := make([]tensor.Info, len(ts))
	for i, tt := range ts {
		infos[i] = tt.info()
	}
	var buf bytes.Buffer
	meta := &formats.GGUFMeta{Version: version, KVCount: nKV, KV: kv, Alignment: align, TailPad: tailPad}
	w, err := NewWriter(&buf, meta, infoOrder, infos)
	if err != nil {
		t.Fatal(err)
	}
	for i, tt := range ts {
		if err := w.WriteTensor(infos[i], tt.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// writeTemp writes b to a file in a test's temporary directory.
func writeTemp(t testing.TB, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// openBytes writes b to a temporary file and opens it.
func openBytes(t testing.TB, b []byte) (*Reader, error) {
	t.Helper()
	r, err := Open(writeTemp(t, "test.gguf", b))
	if err == nil {
		t.Cleanup(func() { r.Close() })
	}
	return r, err
}

// writeAll writes every tensor of r to w in r's order and closes w.
func writeAll(t testing.TB, w *Writer, r *Reader) {
	t.Helper()
	for i, ti := range r.Tensors() {
		data, err := r.Bytes(i)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.WriteTensor(ti, data); err != nil {
			t.Fatal(err)
		}
		r.Release(i)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}
