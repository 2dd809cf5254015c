package safetensors

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/tensor"
)

// TestDTypes writes and reads a file per dtype (a matrix, a scalar and an
// empty tensor of it) and checks names, shapes, offsets and bytes.
func TestDTypes(t *testing.T) {
	for name := range dtypeNamesByString() {
		t.Run(name, func(t *testing.T) {
			d, _ := ParseDType(name)
			ts := []tensor.Info{ti("m", d, 3, 5), ti("s", d), ti("e", d, 0, 4)}
			data := sized(t, ts)
			p := filepath.Join(t.TempDir(), "x.safetensors")
			if err := WriteFile(p, ts, data, nil); err != nil {
				t.Fatal(err)
			}
			raw := readFile(t, p)
			if !bytes.Contains(raw, []byte(`"dtype":"`+name+`"`)) {
				t.Errorf("header lacks dtype %s: %s", name, raw)
			}
			r, err := Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			got := r.Tensors()
			if len(got) != 3 {
				t.Fatalf("%d tensors", len(got))
			}
			for i, x := range got {
				if x.Name != ts[i].Name || x.DType != d || !slices.Equal(x.Shape, ts[i].Shape) {
					t.Errorf("tensor %d = %+v, want %+v", i, x, ts[i])
				}
				b, err := r.Bytes(i)
				if err != nil || !bytes.Equal(b, data[i]) {
					t.Errorf("tensor %s bytes differ (%v)", x.Name, err)
				}
				if !bytes.Equal(raw[x.Offset:x.Offset+x.Size], data[i]) {
					t.Errorf("tensor %s: Offset %d does not locate its bytes", x.Name, x.Offset)
				}
			}
		})
	}
}

func dtypeNamesByString() map[string]tensor.DType {
	m := make(map[string]tensor.DType)
	for d, n := range dtypeNames {
		m[n] = d
	}
	return m
}

func TestMeta(t *testing.T) {
	// Hand-made header: odd spacing, metadata in the middle, data in an
	// order other than the header's, 5 padding spaces.
	hdr := `{"w":{"dtype":"F16","shape":[2],"data_offsets":[4,8]},"__metadata__": {"format": "pt", "k":"v"},"b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}`
	data := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	p := writeTemp(t, t.TempDir(), "model.safetensors", rawFile(hdr, 5, data))
	r, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	m := r.Meta()
	if m.Kind != formats.Safetensors || len(m.Files) != 1 || m.IndexName != "" {
		t.Fatalf("meta %+v", m)
	}
	f := m.Files[0]
	if f.Name != "model.safetensors" || string(f.Header) != hdr || f.HeaderPad != 5 ||
		string(f.Metadata) != `{"format": "pt", "k":"v"}` || f.Size != int64(8+len(hdr)+5+len(data)) {
		t.Errorf("file meta %+v", f)
	}
	got := r.Tensors()
	base := int64(8 + len(hdr) + 5)
	want := []tensor.Info{
		{Name: "b", DType: tensor.U8, Shape: []int64{4}, Offset: base, Size: 4},
		{Name: "w", DType: tensor.F16, Shape: []int64{2}, Offset: base + 4, Size: 4},
	}
	for i := range want {
		if fmt.Sprint(got[i]) != fmt.Sprint(want[i]) {
			t.Errorf("tensor %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if b, _ := r.Bytes(1); !bytes.Equal(b, data[4:]) {
		t.Errorf("Bytes(1) = %v", b)
	}
	for _, i := range []int{-1, 2} {
		if _, err := r.Bytes(i); err == nil {
			t.Errorf("Bytes(%d) succeeded", i)
		}
		r.Release(i) // no panic
	}
	r.Release(0)
	if b, _ := r.Bytes(0); !bytes.Equal(b, data[:4]) {
		t.Errorf("after Release, Bytes(0) = %v", b)
	}
	// Without metadata, Metadata is nil.
	p2 := writeTemp(t, t.TempDir(), "x.safetensors", rawFile(`{}`, 6, nil))
	r2, err := Open(p2)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if f := r2.Meta().Files[0]; f.Metadata != nil || len(r2.Tensors()) != 0 {
		t.Errorf("empty file meta %+v", f)
	}
}

// shard is a file of a test checkout.
type shard struct {
	name string
	raw  []byte
}

func TestMalformed(t *testing.T) {
	f32 := func(name string, b, e int) string {
		return fmt.Sprintf(`%q:{"dtype":"F32","shape":[%d],"data_offsets":[%d,%d]}`, name, (e-b)/4, b, e)
	}
	file := func(hdr string, n int) []byte { return rawFile(hdr, 0, make([]byte, n)) }
	good := file("{"+f32("a", 0, 8)+"}", 8)
	okIndex := `{"metadata":{"total_size":16},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}`
	s1 := shard{"s1.safetensors", good}
	s2 := shard{"s2.safetensors", file("{"+f32("b", 0, 8)+"}", 8)}
	s2b := shard{"s2.safetensors", file("{"+f32("b", 0, 8)+","+f32("c", 8, 12)+"}", 12)}
	tests := []struct {
		name  string
		raw   []byte  // a single file
		dir   []shard // or a checkout
		index string
		want  string // in the error message
	}{
		{name: "empty file", raw: nil, want: "too short"},
		{name: "truncated length", raw: good[:5], want: "too short"},
		{name: "header length beyond file", raw: good[:20], want: "exceeds the file size"},
		{name: "header length huge", raw: append([]byte{0, 0, 0, 0, 0, 0, 0, 1}, good[8:]...), want: "exceeds the 100000000-byte limit"},
		{name: "truncated data", raw: good[:len(good)-1], want: `tensor "a"`},
		{name: "trailing data", raw: append(bytes.Clone(good), 0, 0, 0, 0), want: "cover 8 bytes of a 12-byte"},
		{name: "not JSON", raw: file("{nope}", 0), want: "header"},
		{name: "array header", raw: file("[1,2]", 0), want: "start with '{'"},
		{name: "string header", raw: file(`"x"`, 0), want: "start with '{'"},
		{name: "two objects", raw: file(`{}{}`, 0), want: "after top-level value"},
		{name: "invalid UTF-8", raw: file("{\"\xff\":1}", 0), want: "UTF-8"},
		{name: "overlapping offsets", raw: file("{"+f32("a", 0, 8)+","+f32("b", 4, 12)+"}", 12), want: `tensor "b": data_offsets [4, 12] overlap tensor "a"`},
		{name: "hole between tensors", raw: file("{"+f32("a", 0, 8)+","+f32("b", 12, 20)+"}", 20), want: "hole of 4 bytes"},
		{name: "offsets out of range", raw: file("{"+f32("a", 0, 8)+","+f32("b", 8, 16)+"}", 12), want: "run past the data section"},
		{name: "offsets decrease", raw: file(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}`, 8), want: "decrease"},
		{name: "offset overflow", raw: file(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[18446744073709551615,18446744073709551619]}}`, 8), want: "data_offsets"},
		{name: "shape product overflow", raw: file(`{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}`, 0), want: "invalid shape"},
		{name: "shape beyond int64", raw: file(`{"a":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,0]}}`, 0), want: "invalid shape"},
		{name: "negative dimension", raw: file(`{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}`, 0), want: "natural number"},
		{name: "fractional dimension", raw: file(`{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,6]}}`, 6), want: "natural number"},
		{name: "shape disagrees with bytes", raw: file(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, 8), want: "hold 8 bytes, F32[3] needs 12"},
		{name: "unknown dtype", raw: file(`{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}`, 1), want: `tensor "a": tensor: unknown dtype "F4"`},
		{name: "dtype not a string", raw: file(`{"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}}`, 4), want: "dtype"},
		{name: "missing data_offsets", raw: file(`{"a":{"dtype":"F32","shape":[1]}}`, 4), want: "data_offsets"},
		{name: "extra key", raw: file(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}`, 4), want: `unexpected key "x"`},
		{name: "duplicate entry key", raw: file(`{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4), want: "duplicate key"},
		{name: "three offsets", raw: file(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}}`, 4), want: "2"},
		{name: "entry not an object", raw: file(`{"a":[1]}`, 0), want: "not a JSON object"},
		{name: "duplicate names", raw: file("{"+f32("a", 0, 4)+","+f32("a", 4, 8)+"}", 8), want: `tensor "a": duplicate name`},
		{name: "metadata not strings", raw: file(`{"__metadata__":{"n":1}}`, 0), want: "__metadata__"},
		{name: "metadata array", raw: file(`{"__metadata__":["x"]}`, 0), want: "__metadata__"},
		{name: "duplicate metadata", raw: file(`{"__metadata__":{},"__metadata__":{}}`, 0), want: "duplicate"},
		{name: "index names missing shard", dir: []shard{s1}, index: okIndex, want: "s2.safetensors"},
		{name: "tensor missing from its shard", dir: []shard{s1, s2},
			index: `{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors","c":"s2.safetensors"}}`,
			want:  `s2.safetensors: tensor "c": missing`},
		{name: "tensor in the wrong shard", dir: []shard{s1, s2},
			index: `{"weight_map":{"a":"s2.safetensors","b":"s2.safetensors"}}`, want: `s2.safetensors: tensor "a": missing`},
		{name: "tensor in a shard the index does not name for it", dir: []shard{s1, s2},
			index: `{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}}`, want: `s1.safetensors: tensor "b": missing`},
		{name: "tensor not in index", dir: []shard{s1, s2b},
			index: `{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}`, want: `s2.safetensors: tensor "c": not in the index`},
		{name: "index moves tensor", dir: []shard{s1, s2b},
			index: `{"weight_map":{"a":"s1.safetensors","b":"s2.safetensors","c":"s1.safetensors"}}`, want: `s2.safetensors: tensor "c": the index model.safetensors.index.json places it in s1.safetensors`},
		{name: "duplicate across shards", dir: []shard{s1, {"s3.safetensors", good}}, want: `tensor "a": appears in both`},
		{name: "index escapes directory", dir: []shard{s1}, index: `{"weight_map":{"a":"../s1.safetensors"}}`, want: "not a file name"},
		{name: "index not an object", dir: []shard{s1}, index: `[]`, want: "not a JSON object"},
		{name: "index without weight_map", dir: []shard{s1}, index: `{"metadata":{}}`, want: "no weight_map"},
		{name: "index weight_map not strings", dir: []shard{s1}, index: `{"weight_map":{"a":1}}`, want: "index"},
		{name: "bad shard", dir: []shard{s1, {"s2.safetensors", good[:9]}}, index: okIndex, want: "s2.safetensors"},
		{name: "empty directory", dir: []shard{}, want: "no *.safetensors"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "bad.safetensors")
			if tc.dir != nil {
				path = filepath.Join(dir, "ckpt")
				if err := os.Mkdir(path, 0o755); err != nil {
					t.Fatal(err)
				}
				for _, s := range tc.dir {
					writeTemp(t, path, s.name, s.raw)
				}
				if tc.index != "" {
					writeTemp(t, path, "model.safetensors.index.json", []byte(tc.index))
				}
			} else {
				writeTemp(t, dir, "bad.safetensors", tc.raw)
			}
			r, err := Open(path)
			if err == nil {
				r.Close()
				t.Fatalf("Open succeeded, want error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if !errors.Is(err, ErrFormat) {
				t.Errorf("error %q does not match ErrFormat", err)
			}
			if tc.dir == nil && !strings.Contains(err.Error(), "bad.safetensors") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}
