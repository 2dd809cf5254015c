package gguf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/tensor"
)

func archKV() []byte {
	var e enc
	return e.key("general.architecture", TypeString).str("x").b
}

// baseTensors are two tensors: a 2x32 Q4_0 matrix (36 bytes) at 0 and a
// 4-element F32 vector (16 bytes) at 64.
func baseTensors() []rawTensor {
	return []rawTensor{
		{name: "a", ne: []uint64{32, 2}, typ: 2, off: 0},
		{name: "b", ne: []uint64{4}, typ: 0, off: 64},
	}
}

// baseData is the data section for baseTensors: a's bytes are 1..36, b's
// 65..80, and the padding between them is zero.
func baseData() []byte {
	d := make([]byte, 80)
	for i := range d {
		if i < 36 || i >= 64 {
			d[i] = byte(i + 1)
		}
	}
	return d
}

func TestOpenHandBuilt(t *testing.T) {
	kv, wantKV := handKV()
	for _, version := range []uint32{2, 3} {
		t.Run(fmt.Sprint("v", version), func(t *testing.T) {
			file := rawFile(version, uint64(len(wantKV)), kv, baseTensors(), 32, baseData())
			r, err := openBytes(t, file)
			if err != nil {
				t.Fatal(err)
			}
			start := int64(len(file) - 80)
			if r.DataOffset() != start || start%32 != 0 {
				t.Errorf("data offset %d, want %d (aligned)", r.DataOffset(), start)
			}
			want := []tensor.Info{
				{Name: "a", DType: tensor.Q4_0, Shape: []int64{2, 32}, Offset: start, Size: 36},
				{Name: "b", DType: tensor.F32, Shape: []int64{4}, Offset: start + 64, Size: 16},
			}
			if got := r.Tensors(); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("Tensors:\n got %v\nwant %v", got, want)
			}
			b, err := r.Bytes(1)
			if err != nil || !bytes.Equal(b, baseData()[64:80]) {
				t.Errorf("Bytes(1) = %v, %v", b, err)
			}
			if _, err := r.Bytes(2); err == nil {
				t.Error("Bytes(2) succeeded")
			}
			if _, err := r.Bytes(-1); err == nil {
				t.Error("Bytes(-1) succeeded")
			}
			r.Release(0) // must not disturb later reads
			if b, _ := r.Bytes(0); !bytes.Equal(b, baseData()[:36]) {
				t.Error("Bytes(0) after Release differs")
			}
			m := r.Meta()
			wantMeta := &formats.Meta{Kind: formats.GGUF, Files: []formats.FileMeta{{Name: "test.gguf", Size: int64(len(file))}},
				GGUF: &formats.GGUFMeta{Version: version, KVCount: uint64(len(wantKV)), KV: kv, Alignment: 32, TailPad: 0}}
			if fmt.Sprintf("%+v %+v", m.Files, *m.GGUF) != fmt.Sprintf("%+v %+v", wantMeta.Files, *wantMeta.GGUF) || m.Kind != formats.GGUF {
				t.Errorf("Meta:\n got %+v %+v\nwant %+v %+v", m.Files, *m.GGUF, wantMeta.Files, *wantMeta.GGUF)
			}
			if got := r.KV(); fmt.Sprintf("%#v", got) != fmt.Sprintf("%#v", wantKV) {
				t.Errorf("KV:\n got %#v\nwant %#v", got, wantKV)
			}
			if err := r.CheckReproducible(); err != nil {
				t.Error(err)
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := r.Bytes(0); !errors.Is(err, ErrClosed) {
				t.Errorf("Bytes after Close: %v, want ErrClosed", err)
			}
		})
	}
}

// TestTensorOrder checks that Tensors follows data offsets, with empty
// tensors first and then file order for equal offsets, and that InfoOrder
// keeps the file order.
func TestTensorOrder(t *testing.T) {
	ts := []rawTensor{
		{name: "late", ne: []uint64{8}, typ: 0, off: 64},
		{name: "mid", ne: []uint64{4}, typ: 0, off: 32},
		{name: "empty1", ne: []uint64{0, 3}, typ: 0, off: 32},
		{name: "early", ne: []uint64{8}, typ: 0, off: 0},
		{name: "empty0", ne: []uint64{0}, typ: 1, off: 32},
	}
	file := rawFile(3, 0, nil, ts, 32, make([]byte, 96))
	r, err := openBytes(t, file)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ti := range r.Tensors() {
		names = append(names, ti.Name)
	}
	if want := []string{"early", "empty1", "empty0", "mid", "late"}; !slices.Equal(names, want) {
		t.Errorf("data order %v, want %v", names, want)
	}
	if want := []string{"late", "mid", "empty1", "early", "empty0"}; !slices.Equal(r.InfoOrder(), want) {
		t.Errorf("info order %v, want %v", r.InfoOrder(), want)
	}
	if got := r.Meta().GGUF.TailPad; got != 0 {
		t.Errorf("TailPad %d, want 0", got)
	}
	// The writer puts "late" right after "mid" at 64, so this file is
	// reproducible although its infos are not in data order.
	if err := r.CheckReproducible(); err != nil {
		t.Error(err)
	}
	if out := rewrite(t, r); !bytes.Equal(out, file) {
		t.Errorf("rewrite differs at byte %d", firstDiff(out, file))
	}
}

func TestOpenErrors(t *testing.T) {
	kv := archKV()
	base := func() []byte { return rawFile(3, 1, kv, baseTensors(), 32, baseData()) }
	withKV := func(kv []byte, n uint64) []byte { return rawFile(3, n, kv, baseTensors(), 32, baseData()) }
	withTensors := func(ts []rawTensor, data []byte) []byte { return rawFile(3, 1, kv, ts, 32, data) }
	patch := func(off int, v uint64, size int) []byte {
		b := base()
		if size == 4 {
			binary.LittleEndian.PutUint32(b[off:], uint32(v))
		} else {
			binary.LittleEndian.PutUint64(b[off:], v)
		}
		return b
	}
	var e enc
	nested := func(depth int) []byte {
		var e enc
		e.key("deep", TypeArray)
		for i := 1; i < depth; i++ {
			e.u32(uint32(TypeArray)).u64(1)
		}
		e.u32(uint32(TypeUint8)).u64(1).u8(7)
		return e.b
	}
	modTensor := func(i int, f func(*rawTensor)) []rawTensor {
		ts := baseTensors()
		f(&ts[i])
		return ts
	}

	tests := []struct {
		name   string
		file   []byte
		want   error
		msg    string // substring of the message
		tensor string // FormatError.Tensor
	}{
		{"empty", nil, ErrBadMagic, "", ""},
		{"bad magic", append([]byte("GGUG"), base()[4:]...), ErrBadMagic, "", ""},
		{"version 1", patch(4, 1, 4), ErrUnsupportedVersion, "unsupported version 1 (supported 2-3)", ""},
		{"version 4", patch(4, 4, 4), ErrUnsupportedVersion, "unsupported version 4 (supported 2-3)", ""},
		{"header cut", base()[:20], ErrTruncated, "", ""},
		{"tensor count over limit", patch(8, MaxCount+1, 8), ErrLimit, "tensors", ""},
		{"tensor count over bytes", patch(8, 100, 8), ErrTruncated, "tensor infos", ""},
		{"kv count over limit", patch(16, MaxCount+1, 8), ErrLimit, "keys", ""},
		{"kv count over bytes", patch(16, 1000, 8), ErrTruncated, "keys", ""},
		{"key too long", withKV(e.str(strings.Repeat("k", MaxKeyLen+1)).u32(0).u8(0).b, 1), ErrLimit, "key of 65536 bytes", ""},
		{"string too long", withKV((&enc{}).key("s", TypeString).u64(MaxStringLen+1).b, 1), ErrLimit, "string of", ""},
		{"string past end", withKV((&enc{}).key("s", TypeString).u64(1<<20).b, 1), ErrTruncated, `(key "s")`, ""},
		{"unknown value type", withKV((&enc{}).key("s", 13).u32(0).b, 1), ErrFormat, "unknown value type 13", ""},
		{"unknown element type", withKV((&enc{}).key("s", TypeArray).u32(99).u64(0).b, 1), ErrFormat, "unknown array element type 99", ""},
		{"array past end", withKV((&enc{}).key("s", TypeArray).u32(uint32(TypeUint64)).u64(1000).b, 1), ErrTruncated, "array of 1000", ""},
		{"array over limit", withKV((&enc{}).key("s", TypeArray).u32(uint32(TypeUint8)).u64(MaxArrayLen+1).b, 1), ErrLimit, "array of", ""},
		{"too deep", withKV(nested(MaxDepth+1), 1), ErrLimit, "nested", ""},
		{"duplicate key", withKV(append(archKV(), archKV()...), 2), ErrFormat, "duplicate key", ""},
		{"alignment type", withKV((&enc{}).key(AlignmentKey, TypeUint64).u64(32).b, 1), ErrFormat, "want uint32", ""},
		{"alignment zero", withKV((&enc{}).key(AlignmentKey, TypeUint32).u32(0).b, 1), ErrFormat, "not a power of two", ""},
		{"alignment 48", withKV((&enc{}).key(AlignmentKey, TypeUint32).u32(48).b, 1), ErrFormat, "not a power of two", ""},
		{"n_dims 0", withTensors(modTensor(1, func(r *rawTensor) { r.ne = nil }), baseData()), ErrFormat, "n_dims 0", "b"},
		{"n_dims 5", withTensors(modTensor(1, func(r *rawTensor) { r.ne = []uint64{4, 1, 1, 1, 1} }), baseData()), ErrFormat, "n_dims 5", "b"},
		{"huge dimension", withTensors(modTensor(1, func(r *rawTensor) { r.ne = []uint64{0, 1 << 60} }), baseData()), ErrLimit, "dimension", "b"},
		{"too many elements", withTensors(modTensor(1, func(r *rawTensor) { r.ne = []uint64{1 << 24, 1 << 24, 1 << 24} }), baseData()), tensor.ErrShape, "2^48", "b"},
		{"unknown ggml type", withTensors(modTensor(0, func(r *rawTensor) { r.typ = 4 }), baseData()), tensor.ErrUnknownDType, "ggml type 4", "a"},
		{"partial block", withTensors(modTensor(0, func(r *rawTensor) { r.ne = []uint64{16, 2} }), baseData()), ErrFormat, "multiple of 32", "a"},
		{"unaligned offset", withTensors(modTensor(1, func(r *rawTensor) { r.off = 48 }), baseData()), ErrFormat, "not a multiple of the alignment 32", "b"},
		{"data past end", withTensors(baseTensors(), baseData()[:79]), ErrTruncated, "past the end", "b"},
		{"offset past end", withTensors(modTensor(1, func(r *rawTensor) { r.off = 1 << 40 }), baseData()), ErrTruncated, "past the end", "b"},
		{"offset over int64", withTensors(modTensor(1, func(r *rawTensor) { r.off = 1 << 63 }), baseData()), ErrLimit, "offset", "b"},
		{"overlap", withTensors(modTensor(1, func(r *rawTensor) { r.off = 32 }), baseData()), ErrFormat, `overlaps tensor "a"`, "b"},
		{"duplicate name", withTensors(modTensor(1, func(r *rawTensor) { r.name = "a" }), baseData()), ErrFormat, "duplicate tensor name", "a"},
		{"name too long", withTensors(modTensor(1, func(r *rawTensor) { r.name = strings.Repeat("n", MaxKeyLen+1) }), baseData()), ErrLimit, "name of tensor 1", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := openBytes(t, tc.file)
			if err == nil {
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("error %q is not %q", err, tc.want)
			}
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %q is not a *FormatError", err)
			}
			if fe.File != "test.gguf" || fe.Tensor != tc.tensor {
				t.Errorf("FormatError names file %q tensor %q, want test.gguf and %q", fe.File, fe.Tensor, tc.tensor)
			}
			if fe.Offset < 0 || fe.Offset > int64(len(tc.file)) {
				t.Errorf("offset %d outside the %d-byte file", fe.Offset, len(tc.file))
			}
			if !strings.Contains(err.Error(), tc.msg) || !strings.HasPrefix(err.Error(), "gguf: test.gguf: ") {
				t.Errorf("message %q lacks %q", err, tc.msg)
			}
		})
	}

	// Depth MaxDepth is allowed.
	if _, err := openBytes(t, withKV(nested(MaxDepth), 1)); err != nil {
		t.Errorf("depth %d: %v", MaxDepth, err)
	}
}

// TestFormatErrorOffset checks that errors point at the offending field.
func TestFormatErrorOffset(t *testing.T) {
	file := rawFile(3, 1, archKV(), baseTensors(), 32, baseData())
	binary.LittleEndian.PutUint32(file[4:], 7)
	_, err := openBytes(t, file)
	var fe *FormatError
	if !errors.As(err, &fe) || fe.Offset != 4 {
		t.Fatalf("got %v, want a FormatError at offset 4", err)
	}
	if want := "gguf: test.gguf: offset 4: unsupported version 7 (supported 2-3)"; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
}

// TestTruncation cuts files at every byte: before the end of the last
// tensor's data Open must fail with a *FormatError; after it, the file is
// valid with a shorter TailPad.
func TestTruncation(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	kv, m := handKV()
	gen := buildFile(t, 3, kv, uint64(len(m)), 32, 32, nil, []testTensor{
		randomTensor(rng, "x", tensor.Q4_1, 2, 64),
		randomTensor(rng, "y", tensor.F16, 3),
	})
	small, err := os.ReadFile(filepath.Join(goldenDir, "small.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		file []byte
	}{{"generated", gen}, {"small.gguf", small}} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parse("f", tc.file)
			if err != nil {
				t.Fatal(err)
			}
			dataEnd := int64(len(tc.file)) - r.Meta().GGUF.TailPad
			if r.Meta().GGUF.TailPad == 0 {
				t.Fatal("test file has no tail padding")
			}
			dir := t.TempDir()
			p := filepath.Join(dir, "cut.gguf")
			for n := 0; n < len(tc.file); n++ {
				// parse is Open without the file; test both for a
				// sample of lengths and parse for every length.
				_, err := parse("cut.gguf", tc.file[:n])
				if n%97 == 0 || int64(n) >= dataEnd-2 {
					if err := os.WriteFile(p, tc.file[:n], 0o644); err != nil {
						t.Fatal(err)
					}
					r, oerr := Open(p)
					if oerr == nil {
						r.Close()
					}
					if (oerr == nil) != (err == nil) {
						t.Fatalf("length %d: Open %v, parse %v", n, oerr, err)
					}
				}
				if int64(n) < dataEnd {
					var fe *FormatError
					if !errors.As(err, &fe) {
						t.Fatalf("length %d of %d: got %v, want a FormatError", n, len(tc.file), err)
					}
					continue
				}
				if err != nil {
					t.Fatalf("length %d (data ends at %d): %v", n, dataEnd, err)
				}
			}
		})
	}
}

// TestCheckReproducible checks the layouts a rewrite cannot reproduce.
func TestCheckReproducible(t *testing.T) {
	kv := archKV()
	good := rawFile(3, 1, kv, baseTensors(), 32, baseData())
	start := len(good) - 80
	gap := rawFile(3, 1, kv, []rawTensor{baseTensors()[0], {name: "b", ne: []uint64{4}, typ: 0, off: 96}}, 32, make([]byte, 112))
	late := rawFile(3, 1, kv, []rawTensor{{name: "a", ne: []uint64{32, 2}, typ: 2, off: 32}}, 32, make([]byte, 68))

	padByte := bytes.Clone(good)
	padByte[start+40] = 1 // between a (ends at 36) and b (at 64)
	tail := append(bytes.Clone(good), 0, 0, 7)
	headPad := bytes.Clone(good)
	if r, err := parse("f", good); err != nil || r.infoEnd >= r.dataStart {
		t.Fatalf("test file has no padding before its data section (%v)", err)
	} else {
		headPad[r.infoEnd] = 9
	}

	tests := []struct {
		name string
		file []byte
		msg  string
	}{
		{"canonical", good, ""},
		{"zero tail", append(bytes.Clone(good), make([]byte, 100)...), ""},
		{"gap", gap, "a rewrite puts it at 64"},
		{"first not at 0", late, "a rewrite puts it at 0"},
		{"padding byte", padByte, "padding before the tensor"},
		{"tail byte", tail, "after the last tensor"},
		{"header padding byte", headPad, "before the data section"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := openBytes(t, tc.file)
			if err != nil {
				t.Fatal(err)
			}
			err = r.CheckReproducible()
			out := rewrite(t, r)
			if tc.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(out, tc.file) {
					t.Fatalf("rewrite differs at byte %d", firstDiff(out, tc.file))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("CheckReproducible = %v, want an error containing %q", err, tc.msg)
			}
			if bytes.Equal(out, tc.file) {
				t.Fatal("rewrite is identical although CheckReproducible reported a difference")
			}
			// The rewrite still holds the same tensors and metadata.
			r2, err := openBytes(t, out)
			if err != nil {
				t.Fatal(err)
			}
			sameContent(t, r, r2)
		})
	}
}

// sameContent checks that two readers hold the same metadata and tensors.
func sameContent(t *testing.T, a, b *Reader) {
	t.Helper()
	if !bytes.Equal(a.Meta().GGUF.KV, b.Meta().GGUF.KV) || a.Meta().GGUF.Version != b.Meta().GGUF.Version {
		t.Error("metadata differs")
	}
	if !slices.Equal(a.InfoOrder(), b.InfoOrder()) {
		t.Errorf("info order %v vs %v", a.InfoOrder(), b.InfoOrder())
	}
	ta, tb := a.Tensors(), b.Tensors()
	if len(ta) != len(tb) {
		t.Fatalf("%d vs %d tensors", len(ta), len(tb))
	}
	for i := range ta {
		if ta[i].Name != tb[i].Name || ta[i].DType != tb[i].DType || !slices.Equal(ta[i].Shape, tb[i].Shape) {
			t.Errorf("tensor %d: %v vs %v", i, ta[i], tb[i])
		}
		da, _ := a.Bytes(i)
		db, _ := b.Bytes(i)
		if !bytes.Equal(da, db) {
			t.Errorf("tensor %s: data differs", ta[i].Name)
		}
	}
}

func TestMetadataHelpers(t *testing.T) {
	_, m := handKV()
	if s, ok := m.String("general.architecture"); !ok || s != "llama" {
		t.Errorf("String = %q, %v", s, ok)
	}
	if _, ok := m.String("t.u8"); ok {
		t.Error("String of a uint8 key succeeded")
	}
	for _, tc := range []struct {
		key  string
		want uint64
		ok   bool
	}{
		{"t.u8", 250, true}, {"t.u16", 65535, true}, {"t.u32", 0xdeadbeef, true},
		{"t.u64", 1<<64 - 1, true}, {"t.i8", 0, false}, {"t.i16", 0, false},
		{"t.f32", 0, false}, {"missing", 0, false}, {"t.string", 0, false},
	} {
		got, ok := m.Uint(tc.key)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("Uint(%q) = %d, %v; want %d, %v", tc.key, got, ok, tc.want, tc.ok)
		}
	}
	pos := Metadata{{Key: "n", Type: TypeInt32, Value: int32(5)}}
	if v, ok := pos.Uint("n"); !ok || v != 5 {
		t.Errorf("Uint of int32 5 = %d, %v", v, ok)
	}
}

func TestKVString(t *testing.T) {
	long := make([]uint32, 20)
	for i := range long {
		long[i] = uint32(i)
	}
	tests := []struct {
		kv   KV
		want string
	}{
		{KV{"a", TypeUint32, uint32(7)}, "a (uint32) = 7"},
		{KV{"s", TypeString, "hi\n"}, `s (string) = "hi\n"`},
		{KV{"b", TypeBool, true}, "b (bool) = true"},
		{KV{"l", TypeArray, Array{TypeUint32, long}}, "l ([20]uint32) = [0, 1, 2, 3, 4, 5, 6, 7, ... 12 more]"},
		{KV{"n", TypeArray, Array{TypeArray, []Array{{TypeString, []string{"x"}}, {TypeString, []string{}}}}}, `n ([2][1]string) = [["x"], []]`},
		{KV{"t", TypeString, strings.Repeat("x", 130)}, `t (string) = "` + strings.Repeat("x", 120) + `"... (130 bytes)`},
	}
	for _, tc := range tests {
		if got := tc.kv.String(); got != tc.want {
			t.Errorf("got  %s\nwant %s", got, tc.want)
		}
	}
}
