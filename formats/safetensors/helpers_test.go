package safetensors

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/internal/testfs"
	"github.com/tpconvert/tpconvert/tensor"
)

// pattern returns n deterministic pseudo-random bytes.
func pattern(seed uint64, n int64) []byte {
	r := rand.New(rand.NewPCG(seed, 0x5afe))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// ti builds a tensor.Info.
func ti(name string, d tensor.DType, shape ...int64) tensor.Info {
	return tensor.Info{Name: name, DType: d, Shape: shape}
}

// sized returns data for each tensor, seeded by position.
func sized(t testing.TB, ts []tensor.Info) [][]byte {
	t.Helper()
	data := make([][]byte, len(ts))
	for i, x := range ts {
		n, err := tensor.ByteSize(x.DType, x.Shape)
		if err != nil {
			t.Fatal(err)
		}
		data[i] = pattern(uint64(i)+1, n)
	}
	return data
}

// rawFile assembles a safetensors file from a header string (stored
// length is len(header)+pad, padded with spaces) and a data section.
func rawFile(header string, pad int, data []byte) []byte {
	var b []byte
	b = binary.LittleEndian.AppendUint64(b, uint64(len(header)+pad))
	b = append(b, header...)
	b = append(b, bytes.Repeat([]byte{' '}, pad)...)
	return append(b, data...)
}

func writeTemp(t testing.TB, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

var readFile = testfs.ReadFile

// rewrite reads every tensor of r and writes it with a Writer built from
// file k's metadata, returning the output.
func rewrite(t testing.TB, r *Reader, k int) ([]byte, *Writer) {
	t.Helper()
	var sel []int
	var ts []tensor.Info
	for i, x := range r.Tensors() {
		if x.File == k {
			sel = append(sel, i)
			ts = append(ts, x)
		}
	}
	var buf bytes.Buffer
	w, err := NewWriter(&buf, ts, &r.Meta().Files[k])
	if err != nil {
		t.Fatal(err)
	}
	for j, i := range sel {
		b, err := r.Bytes(i)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.WriteTensor(ts[j], b); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if int64(buf.Len()) != w.Size() {
		t.Fatalf("Size() = %d, wrote %d bytes", w.Size(), buf.Len())
	}
	return buf.Bytes(), w
}

// digests returns the SHA-256 of every tensor of a source, by name.
func digests(t testing.TB, s formats.Source) map[string][32]byte {
	t.Helper()
	out := make(map[string][32]byte)
	for i, x := range s.Tensors() {
		b, err := s.Bytes(i)
		if err != nil {
			t.Fatal(err)
		}
		out[x.Name] = sha256.Sum256(b)
	}
	return out
}

// copyAll writes every tensor of src to sink in src's order.
func copyAll(t testing.TB, src formats.Source, sink formats.Sink) {
	t.Helper()
	for i, x := range src.Tensors() {
		b, err := src.Bytes(i)
		if err != nil {
			t.Fatal(err)
		}
		if err := sink.WriteTensor(x, b); err != nil {
			t.Fatal(err)
		}
		src.Release(i)
	}
}

// regenerate writes every tensor of r with a Writer for file 0's metadata
// stripped of its original header, so that the header is laid out anew;
// it returns that metadata and the output.
func regenerate(t testing.TB, r *Reader) (formats.FileMeta, []byte) {
	t.Helper()
	fm := r.Meta().Files[0]
	fm.Header = nil
	var buf bytes.Buffer
	w, err := NewWriter(&buf, r.Tensors(), &fm)
	if err != nil {
		t.Fatal(err)
	}
	copyAll(t, r, w)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if w.Verbatim() {
		t.Fatal("writer without the original header reports a verbatim copy")
	}
	return fm, buf.Bytes()
}

// writeDir writes every tensor of r with a DirWriter for m into out.
func writeDir(t testing.TB, r *Reader, m *formats.Meta, out string) {
	t.Helper()
	dw, err := NewDirWriter(out, m, r.Tensors(), DirOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer dw.Abort()
	copyAll(t, r, dw)
	if err := dw.Close(); err != nil {
		t.Fatal(err)
	}
}
