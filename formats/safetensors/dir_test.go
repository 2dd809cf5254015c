package safetensors

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/internal/testfs"
	"github.com/tpconvert/tpconvert/tensor"
)

// checkoutIndex is an index as transformers writes it, plus a key this
// package does not know, which must survive.
const checkoutIndex = `{
  "metadata": {
    "total_parameters": 76,
    "total_size": 224
  },
  "weight_map": {
    "lm_head.weight": "model-00003-of-00003.safetensors",
    "model.embed_tokens.weight": "model-00001-of-00003.safetensors",
    "model.layers.0.mlp.weight": "model-00002-of-00003.safetensors",
    "model.layers.0.norm.weight": "model-00001-of-00003.safetensors",
    "model.layers.1.mlp.weight": "model-00002-of-00003.safetensors",
    "model.norm.weight": "model-00003-of-00003.safetensors"
  }
}
`

// makeCheckout writes a 3-shard checkout (with unrelated files beside it)
// and returns its directory.
func makeCheckout(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ckpt")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shards := [][]tensor.Info{
		{ti("model.embed_tokens.weight", tensor.BF16, 8, 4), ti("model.layers.0.norm.weight", tensor.F32, 4)},
		{ti("model.layers.0.mlp.weight", tensor.BF16, 4, 4), ti("model.layers.1.mlp.weight", tensor.F16, 4, 4)},
		{ti("model.norm.weight", tensor.F32, 4), ti("lm_head.weight", tensor.BF16, 8, 4)},
	}
	for k, ts := range shards {
		name := filepath.Join(dir, []string{"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors"}[k])
		if err := WriteFile(name, ts, sized(t, ts), map[string]string{"format": "pt"}); err != nil {
			t.Fatal(err)
		}
	}
	writeTemp(t, dir, "model.safetensors.index.json", []byte(checkoutIndex))
	writeTemp(t, dir, "config.json", []byte(`{}`))
	return dir
}

func TestShardedRoundTrip(t *testing.T) {
	src := makeCheckout(t)
	r, err := Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	m := r.Meta()
	if m.IndexName != "model.safetensors.index.json" || string(m.IndexJSON) != checkoutIndex || len(m.Files) != 3 {
		t.Fatalf("meta: index %q, %d files", m.IndexName, len(m.Files))
	}
	var order []string
	for _, x := range r.Tensors() {
		order = append(order, m.Files[x.File].Name+":"+x.Name)
	}
	want := []string{
		"model-00001-of-00003.safetensors:model.embed_tokens.weight",
		"model-00001-of-00003.safetensors:model.layers.0.norm.weight",
		"model-00002-of-00003.safetensors:model.layers.0.mlp.weight",
		"model-00002-of-00003.safetensors:model.layers.1.mlp.weight",
		"model-00003-of-00003.safetensors:model.norm.weight",
		"model-00003-of-00003.safetensors:lm_head.weight",
	}
	if !slices.Equal(order, want) {
		t.Fatalf("storage order\n%q\nwant\n%q", order, want)
	}
	sums := digests(t, r)

	out := filepath.Join(t.TempDir(), "out", "nested") // created by the writer
	writeDir(t, r, m, out)
	files := []string{m.IndexName}
	for _, f := range m.Files {
		files = append(files, f.Name)
	}
	for _, f := range files {
		if !bytes.Equal(readFile(t, filepath.Join(out, f)), readFile(t, filepath.Join(src, f))) {
			t.Errorf("%s differs from the source", f)
		}
	}
	entries, _ := os.ReadDir(out)
	if len(entries) != 4 {
		t.Errorf("output holds %d files, want 3 shards and the index", len(entries))
	}
	r2, err := Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if got := digests(t, r2); !mapsEqual(got, sums) {
		t.Error("tensor digests differ after the round trip")
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestIndexRebuilt changes a tensor's dtype, which changes its shard's
// size: the index keeps every byte but metadata.total_size.
func TestIndexRebuilt(t *testing.T) {
	src := makeCheckout(t)
	r, err := Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ts := r.Tensors()
	// model.layers.1.mlp.weight F16 -> F32: 32 more bytes of tensor data.
	ts[3].DType = tensor.F32
	dw, err := NewDirWriter(t.TempDir(), r.Meta(), ts, DirOptions{Overwrite: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dw.Abort()
	newData := pattern(9, 64)
	for i, x := range ts {
		b, _ := r.Bytes(i)
		if i == 3 {
			b = newData
		}
		if err := dw.WriteTensor(x, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := dw.Close(); err != nil {
		t.Fatal(err)
	}
	gotIndex := readFile(t, filepath.Join(dw.dir, "model.safetensors.index.json"))
	// Tensor bytes: 64+16 + 32+64 + 16+64 = 256.
	wantIndex := strings.Replace(checkoutIndex, `"total_size": 224`, `"total_size": 256`, 1)
	if string(gotIndex) != wantIndex {
		t.Errorf("index\n%s\nwant\n%s", gotIndex, wantIndex)
	}
	r2, err := Open(dw.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	before, after := digests(t, r), digests(t, r2)
	for name, sum := range before {
		if name == "model.layers.1.mlp.weight" {
			if b, _ := r2.Bytes(3); !bytes.Equal(b, newData) || r2.Tensors()[3].DType != tensor.F32 {
				t.Errorf("changed tensor not written")
			}
			continue
		}
		if after[name] != sum {
			t.Errorf("tensor %q differs", name)
		}
	}
	// Unchanged shards are byte-identical.
	for _, f := range []string{"model-00001-of-00003.safetensors", "model-00003-of-00003.safetensors"} {
		if !bytes.Equal(readFile(t, filepath.Join(dw.dir, f)), readFile(t, filepath.Join(src, f))) {
			t.Errorf("%s differs", f)
		}
	}

	// Without the original index bytes, an index is generated.
	meta := *r.Meta()
	meta.IndexJSON = nil
	out := t.TempDir()
	dw2, err := NewDirWriter(out, &meta, r.Tensors(), DirOptions{})
	if err != nil {
		t.Fatal(err)
	}
	copyAll(t, r, dw2)
	if err := dw2.Close(); err != nil {
		t.Fatal(err)
	}
	wm, err := parseIndex(readFile(t, filepath.Join(out, "model.safetensors.index.json")))
	if err != nil || len(wm) != 6 || wm["lm_head.weight"] != "model-00003-of-00003.safetensors" {
		t.Errorf("generated index: %v %v", wm, err)
	}
}

func TestReshard(t *testing.T) {
	ts := []tensor.Info{
		ti("a", tensor.U8, 24), ti("b", tensor.U8, 24), ti("c", tensor.U8, 24),
		ti("big", tensor.F32, 25), ti("d", tensor.U8, 8), ti("e", tensor.I16, 4),
	}
	data := sized(t, ts)
	src := filepath.Join(t.TempDir(), "model.safetensors")
	if err := WriteFile(src, ts, data, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	out := t.TempDir()
	dw, err := NewDirWriter(out, r.Meta(), r.Tensors(), DirOptions{ShardSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	copyAll(t, r, dw)
	if err := dw.Close(); err != nil {
		t.Fatal(err)
	}
	// Greedy by 64 bytes: [a b] (48, +24 > 64), [c] (24, +100 > 64),
	// [big] (100 > 64 alone), [d e] (16).
	const wantIndex = `{
  "metadata": {
    "total_size": 188
  },
  "weight_map": {
    "a": "model-00001-of-00004.safetensors",
    "b": "model-00001-of-00004.safetensors",
    "big": "model-00003-of-00004.safetensors",
    "c": "model-00002-of-00004.safetensors",
    "d": "model-00004-of-00004.safetensors",
    "e": "model-00004-of-00004.safetensors"
  }
}
`
	if got := readFile(t, filepath.Join(out, "model.safetensors.index.json")); string(got) != wantIndex {
		t.Errorf("index\n%s\nwant\n%s", got, wantIndex)
	}
	r2, err := Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	var names []string
	for _, x := range r2.Tensors() {
		names = append(names, x.Name)
	}
	if !slices.Equal(names, []string{"a", "b", "c", "big", "d", "e"}) || len(r2.Meta().Files) != 4 {
		t.Errorf("resharded order %v, %d files", names, len(r2.Meta().Files))
	}
	if !mapsEqual(digests(t, r), digests(t, r2)) {
		t.Error("tensor digests differ after resharding")
	}
	for _, f := range r2.Meta().Files {
		if string(f.Metadata) != `{"format":"pt"}` {
			t.Errorf("%s metadata %s", f.Name, f.Metadata)
		}
	}

	// Everything fits one shard: model.safetensors, no index, identical.
	one := t.TempDir()
	dw, err = NewDirWriter(one, r.Meta(), r.Tensors(), DirOptions{ShardSize: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	copyAll(t, r, dw)
	if err := dw.Close(); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(one)
	if len(entries) != 1 || entries[0].Name() != "model.safetensors" {
		t.Fatalf("single shard output: %v", entries)
	}
	if !bytes.Equal(readFile(t, filepath.Join(one, "model.safetensors")), readFile(t, src)) {
		t.Error("single shard differs from the source")
	}
}

func TestDirNoIndex(t *testing.T) {
	dir := t.TempDir()
	a := []tensor.Info{ti("x", tensor.F32, 2)}
	b := []tensor.Info{ti("y", tensor.I8, 3)}
	if err := WriteFile(filepath.Join(dir, "b.safetensors"), a, sized(t, a), nil); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(filepath.Join(dir, "a.safetensors"), b, sized(t, b), nil); err != nil {
		t.Fatal(err)
	}
	r, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	m := r.Meta()
	if len(m.Files) != 2 || m.Files[0].Name != "a.safetensors" || m.IndexName != "" || r.Tensors()[0].Name != "y" {
		t.Fatalf("meta %+v", m)
	}
	out := t.TempDir()
	dw, err := NewDirWriter(out, m, r.Tensors(), DirOptions{})
	if err != nil {
		t.Fatal(err)
	}
	copyAll(t, r, dw)
	if err := dw.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"a.safetensors", "b.safetensors"} {
		if !bytes.Equal(readFile(t, filepath.Join(out, f)), readFile(t, filepath.Join(dir, f))) {
			t.Errorf("%s differs", f)
		}
	}
	if entries, _ := os.ReadDir(out); len(entries) != 2 {
		t.Errorf("%d files written, want 2", len(entries))
	}
}

// listDir returns the names in dir.
var listDir = testfs.ListDir

func TestDirWriterAtomic(t *testing.T) {
	src := makeCheckout(t)
	r, err := Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ts := r.Tensors()

	t.Run("abort", func(t *testing.T) {
		out := t.TempDir()
		dw, err := NewDirWriter(out, r.Meta(), ts, DirOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			b, _ := r.Bytes(i)
			if err := dw.WriteTensor(ts[i], b); err != nil {
				t.Fatal(err)
			}
		}
		dw.Abort()
		if names := listDir(t, out); len(names) != 0 {
			t.Errorf("after Abort the directory holds %v", names)
		}
		if err := dw.Close(); err == nil {
			t.Error("Close after Abort succeeded")
		}
	})
	t.Run("write error", func(t *testing.T) {
		out := t.TempDir()
		dw, err := NewDirWriter(out, r.Meta(), ts, DirOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := dw.WriteTensor(ts[0], []byte{1}); err == nil {
			t.Fatal("short tensor accepted")
		}
		if names := listDir(t, out); len(names) != 0 {
			t.Errorf("after an error the directory holds %v", names)
		}
		if err := dw.Close(); err == nil {
			t.Error("Close after an error succeeded")
		}
	})
	t.Run("close early", func(t *testing.T) {
		out := t.TempDir()
		dw, err := NewDirWriter(out, r.Meta(), ts, DirOptions{})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := r.Bytes(0)
		if err := dw.WriteTensor(ts[0], b); err != nil {
			t.Fatal(err)
		}
		if err := dw.Close(); err == nil || !strings.Contains(err.Error(), "1 of 6") {
			t.Errorf("Close = %v", err)
		}
		if names := listDir(t, out); len(names) != 0 {
			t.Errorf("after a failed Close the directory holds %v", names)
		}
	})
	t.Run("existing file", func(t *testing.T) {
		out := t.TempDir()
		keep := writeTemp(t, out, "model-00002-of-00003.safetensors", []byte("old"))
		_, err := NewDirWriter(out, r.Meta(), ts, DirOptions{})
		if !errors.Is(err, atomicfile.ErrExists) {
			t.Fatalf("NewDirWriter = %v, want ErrExists", err)
		}
		if names := listDir(t, out); len(names) != 1 || string(readFile(t, keep)) != "old" {
			t.Errorf("directory holds %v", names)
		}
		dw, err := NewDirWriter(out, r.Meta(), ts, DirOptions{Overwrite: true})
		if err != nil {
			t.Fatal(err)
		}
		copyAll(t, r, dw)
		if err := dw.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(readFile(t, keep), readFile(t, filepath.Join(src, "model-00002-of-00003.safetensors"))) {
			t.Error("existing file not replaced")
		}
	})
	t.Run("bad plans", func(t *testing.T) {
		moved := slices.Clone(ts)
		moved[0].File = 1
		badFile := slices.Clone(ts)
		badFile[0].File = 7
		dup := slices.Clone(ts)
		dup[1].Name = dup[0].Name
		dup[1].File = 1
		escape := *r.Meta()
		escape.Files = slices.Clone(escape.Files)
		escape.Files[0].Name = "../evil.safetensors"
		tests := []struct {
			name string
			meta *formats.Meta
			ts   []tensor.Info
			opts DirOptions
			want string
		}{
			{"index disagrees", r.Meta(), moved, DirOptions{}, "places it in"},
			{"file out of range", r.Meta(), badFile, DirOptions{}, "out of range"},
			{"duplicate across shards", r.Meta(), dup, DirOptions{}, "duplicate"},
			{"escaping name", &escape, ts, DirOptions{}, "file name"},
			{"no files", &formats.Meta{}, ts, DirOptions{}, "no output files"},
			{"negative shard size", r.Meta(), ts, DirOptions{ShardSize: -1}, "negative"},
		}
		for _, tc := range tests {
			out := t.TempDir()
			_, err := NewDirWriter(out, tc.meta, tc.ts, tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: NewDirWriter = %v, want error containing %q", tc.name, err, tc.want)
			}
			if names := listDir(t, out); len(names) != 0 {
				t.Errorf("%s: directory holds %v", tc.name, names)
			}
		}
	})
}
