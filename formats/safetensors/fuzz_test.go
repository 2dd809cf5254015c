package safetensors

import (
	"bytes"
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	st "github.com/nlpodyssey/safetensors"

	"github.com/tpconvert/tpconvert/tensor"
)

var updateCorpus = flag.Bool("update", false, "rewrite the seed corpora in testdata/fuzz")

// openSeeds are headers (with their data section lengths) for FuzzOpen.
func openSeeds(tb testing.TB) []struct {
	hdr string
	n   uint16
} {
	ref, _, _ := referenceFile(mixed(), sized(tb, mixed()), `{"format":"pt"}`)
	refN := binary.LittleEndian.Uint64(ref)
	return []struct {
		hdr string
		n   uint16
	}{
		{`{}`, 0},
		{`{"__metadata__":{"format":"pt"}}`, 0},
		{string(ref[8 : 8+refN]), uint16(uint64(len(ref)) - 8 - refN)},
		{`{"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"__metadata__":{"k":"v"},"a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]}}   `, 16},
		{`{"s":{"dtype":"F8_E8M0","shape":[],"data_offsets":[0,1]},"z":{"dtype":"BOOL","shape":[0],"data_offsets":[1,1]}}`, 1},
		{`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, 12},
		{`{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}`, 0},
		{`{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}`, 1},
		{`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}`, 2},
		{`{"\u00e9\"<>":{"dtype":"I64","shape":[1,1],"data_offsets":[0,8]}}`, 8},
	}
}

// indexSeeds are index files for FuzzIndex over the fixture of fuzzShards.
var indexSeeds = []string{
	`{"metadata":{"total_size":28},"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors"}}`,
	"{\n  \"metadata\": {\n    \"total_size\": 28\n  },\n  \"weight_map\": {\n    \"a\": \"s1.safetensors\",\n    \"b\": \"s1.safetensors\",\n    \"c\": \"s2.safetensors\"\n  }\n}\n",
	`{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}}`,
	`{"weight_map":{"a":"s2.safetensors","b":"s1.safetensors","c":"s2.safetensors"}}`,
	`{"weight_map":{"a":"../s1.safetensors"}}`,
	`{"weight_map":{"a":"missing.safetensors"}}`,
	`{"weight_map":[]}`,
	`[]`,
}

func TestWriteCorpus(t *testing.T) {
	if !*updateCorpus {
		t.Skip("run with -update to rewrite testdata/fuzz")
	}
	write := func(target string, i int, body string) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed%02d", i)), []byte("go test fuzz v1\n"+body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range openSeeds(t) {
		write("FuzzOpen", i, fmt.Sprintf("[]byte(%q)\nuint16(%d)\n", s.hdr, s.n))
	}
	for i, s := range indexSeeds {
		write("FuzzIndex", i, fmt.Sprintf("[]byte(%q)\n", s))
	}
}

// FuzzOpen builds a file from a header and a data section of n bytes.
// Whatever it holds must not panic; a file that opens must be written back
// byte for byte, and with a regenerated header must hold the same tensors.
func FuzzOpen(f *testing.F) {
	for _, s := range openSeeds(f) {
		f.Add([]byte(s.hdr), s.n)
	}
	f.Fuzz(func(t *testing.T, hdr []byte, n uint16) {
		file := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
		file = append(file, hdr...)
		file = append(file, pattern(uint64(n), int64(n))...)
		pf, err := parseFile("f.safetensors", file)
		if err != nil {
			return
		}
		r := &Reader{}
		r.add(pf, file)
		upstreamAgrees(t, r, file)
		out, w := rewrite(t, r, 0)
		if !w.Verbatim() || !bytes.Equal(out, file) {
			t.Fatalf("round trip differs (verbatim %v)", w.Verbatim())
		}
		// Regenerated header: same tensors, same bytes.
		fm, buf := regenerate(t, r)
		pf2, err := parseFile("g.safetensors", buf)
		if err != nil {
			t.Fatalf("regenerated file does not open: %v", err)
		}
		r2 := &Reader{}
		r2.add(pf2, buf)
		if len(r2.Tensors()) != len(r.Tensors()) {
			t.Fatalf("%d tensors, want %d", len(r2.Tensors()), len(r.Tensors()))
		}
		for i, x := range r.Tensors() {
			y := r2.Tensors()[i]
			b1, _ := r.Bytes(i)
			b2, _ := r2.Bytes(i)
			if x.Name != y.Name || x.DType != y.DType || fmt.Sprint(x.Shape) != fmt.Sprint(y.Shape) || !bytes.Equal(b1, b2) {
				t.Fatalf("tensor %d: %+v became %+v", i, x, y)
			}
		}
		if !bytes.Equal(r2.Meta().Files[0].Metadata, fm.Metadata) {
			t.Fatalf("metadata %q became %q", fm.Metadata, r2.Meta().Files[0].Metadata)
		}
	})
}

// upstreamAgrees checks that the upstream library, whose validation is
// laxer, also accepts a file Open accepts and finds the same tensors (unless
// the file holds dtypes the library does not know).
func upstreamAgrees(t *testing.T, r *Reader, file []byte) {
	for _, x := range r.Tensors() {
		if _, err := st.ParseDType(x.DType.String()); err != nil {
			return
		}
	}
	u, err := st.Deserialize(file)
	if err != nil {
		t.Fatalf("upstream refuses a file Open accepts: %v", err)
	}
	if u.Len() != len(r.Tensors()) {
		t.Fatalf("upstream finds %d tensors, Open %d", u.Len(), len(r.Tensors()))
	}
	for i, x := range r.Tensors() {
		v, ok := u.Tensor(x.Name)
		b, _ := r.Bytes(i)
		if !ok || !bytes.Equal(v.Data(), b) || v.DType().String() != x.DType.String() {
			t.Fatalf("tensor %q: upstream disagrees", x.Name)
		}
	}
}

// fuzzShards writes the fixed shards FuzzIndex indexes: s1 with a and b,
// s2 with c.
func fuzzShards(t testing.TB, dir string) {
	s1 := []tensor.Info{ti("a", tensor.F32, 3), ti("b", tensor.U8, 4)}
	s2 := []tensor.Info{ti("c", tensor.BF16, 6)}
	if err := WriteFile(filepath.Join(dir, "s1.safetensors"), s1, sized(t, s1), nil); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(filepath.Join(dir, "s2.safetensors"), s2, sized(t, s2), nil); err != nil {
		t.Fatal(err)
	}
}

// FuzzIndex opens a checkout with a fuzzed index over fixed shards. A
// checkout that opens must agree with its weight_map and be written back
// byte for byte by a DirWriter.
func FuzzIndex(f *testing.F) {
	for _, s := range indexSeeds {
		f.Add([]byte(s))
	}
	dir := f.TempDir()
	fuzzShards(f, dir)
	idxPath := filepath.Join(dir, "model.safetensors.index.json")
	f.Fuzz(func(t *testing.T, index []byte) {
		if err := os.WriteFile(idxPath, index, 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := Open(dir)
		if err != nil {
			return
		}
		defer r.Close()
		wm, err := parseIndex(index)
		if err != nil {
			t.Fatalf("checkout opened with an index parseIndex refuses: %v", err)
		}
		m := r.Meta()
		if len(wm) != len(r.Tensors()) || !bytes.Equal(m.IndexJSON, index) {
			t.Fatalf("%d tensors for %d index entries", len(r.Tensors()), len(wm))
		}
		for _, x := range r.Tensors() {
			if wm[x.Name] != m.Files[x.File].Name {
				t.Fatalf("tensor %q in %s, index says %s", x.Name, m.Files[x.File].Name, wm[x.Name])
			}
		}
		out := t.TempDir()
		writeDir(t, r, m, out)
		if got := readFile(t, filepath.Join(out, m.IndexName)); !bytes.Equal(got, index) {
			t.Fatalf("index not written verbatim")
		}
		for _, fm := range m.Files {
			if !bytes.Equal(readFile(t, filepath.Join(out, fm.Name)), readFile(t, filepath.Join(dir, fm.Name))) {
				t.Fatalf("%s differs", fm.Name)
			}
		}
	})
}
