package tpk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/tensor"
)

func testMeta() *formats.Meta {
	return &formats.Meta{Kind: formats.Safetensors, Files: []formats.FileMeta{{Name: "m.safetensors", Metadata: []byte(`{"format":"pt"}`), Size: 123}}}
}

// build writes a .tpk with n F32 tensors of 4 elements whose payload is
// their source bytes.
func build(t testing.TB, n int) ([]byte, [][]byte) {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, testMeta())
	if err != nil {
		t.Fatal(err)
	}
	var payloads [][]byte
	for i := 0; i < n; i++ {
		p := []byte(fmt.Sprintf("payload-%02d-abcdef", i))[:16]
		payloads = append(payloads, p)
		e := Entry{Name: fmt.Sprintf("t%d", i), DType: tensor.F32, Shape: []int64{2, 2}, Codec: "none", CodecVersion: 1, SourceSize: 16,
			Stats: &Stats{RelErr: 0.5, SQNRdB: 6}}
		if err := w.WriteRecord(e, p[:8], p[8:]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), payloads
}

func TestRoundTrip(t *testing.T) {
	b, payloads := build(t, 3)
	r, err := NewReader(bytes.NewReader(b), int64(len(b)), "x.tpk")
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Meta().Files[0].Metadata; string(got) != `{"format":"pt"}` {
		t.Errorf("metadata = %s", got)
	}
	for i, e := range r.Entries() {
		p, err := r.Payload(i)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, payloads[i]) {
			t.Errorf("payload %d = %q, want %q", i, p, payloads[i])
		}
		if err := r.Verify(i); err != nil {
			t.Errorf("Verify(%d): %v", i, err)
		}
		j, err := r.Lookup(e.Name)
		if err != nil || j != i {
			t.Errorf("Lookup(%q) = %d, %v", e.Name, j, err)
		}
	}
	if _, err := r.Lookup("missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Lookup(missing) err = %v", err)
	}
}

func TestOpenFile(t *testing.T) {
	b, payloads := build(t, 2)
	path := filepath.Join(t.TempDir(), "a.tpk")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p, err := r.Payload(1)
	if err != nil || !bytes.Equal(p, payloads[1]) {
		t.Fatalf("Payload(1) = %q, %v", p, err)
	}
}

func TestWriterRejects(t *testing.T) {
	w, _ := NewWriter(&bytes.Buffer{}, testMeta())
	ok := Entry{Name: "a", DType: tensor.F32, Shape: []int64{1}, SourceSize: 4}
	if err := w.WriteRecord(ok, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	for _, e := range []Entry{
		{Name: "a", DType: tensor.F32, Shape: []int64{1}},                // duplicate
		{Name: "", DType: tensor.F32, Shape: []int64{1}},                 // empty name
		{Name: strings.Repeat("x", MaxNameLen+1), DType: tensor.F32},     // long name
		{Name: "b", DType: tensor.F32, Shape: make([]int64, MaxDims+1)},  // too many dims
		{Name: "c", DType: tensor.F32, Shape: []int64{1 << 40, 1 << 40}}, // overflow
		{Name: "d", DType: tensor.F32, Shape: []int64{1}, Params: strings.Repeat("p", MaxParamsLen+1)},
	} {
		if err := w.WriteRecord(e, nil); err == nil {
			t.Errorf("WriteRecord(%.20q) succeeded", e.Name)
		}
	}
}

// mutate returns a copy of b changed by f.
func mutate(b []byte, f func(c []byte) []byte) []byte {
	c := append([]byte(nil), b...)
	return f(c)
}

// rewriteIndex replaces the index by f(index) and fixes the footer.
func rewriteIndex(b []byte, f func(s string) string) []byte {
	foot := b[len(b)-FooterSize:]
	off := binary.LittleEndian.Uint64(foot[16:])
	js := f(string(b[off : len(b)-FooterSize]))
	out := append(append([]byte(nil), b[:off]...), js...)
	var nf [FooterSize]byte
	copy(nf[:], foot)
	binary.LittleEndian.PutUint32(nf[12:], crc32c([]byte(js)))
	binary.LittleEndian.PutUint64(nf[24:], uint64(len(js)))
	return append(out, nf[:]...)
}

func TestMalformed(t *testing.T) {
	good, _ := build(t, 2)
	foot := len(good) - FooterSize
	idxOff := int(binary.LittleEndian.Uint64(good[foot+16:]))
	cases := []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, ErrFormat},
		{"short", good[:20], ErrFormat},
		{"bad magic", mutate(good, func(c []byte) []byte { c[1] = 'X'; return c }), ErrFormat},
		{"future version", mutate(good, func(c []byte) []byte { c[8] = 3; return c }), ErrVersion},
		{"header flags", mutate(good, func(c []byte) []byte { c[10] = 1; return c }), ErrCorrupt},
		{"truncated footer", good[:len(good)-1], ErrCorrupt},
		{"truncated at index", good[:idxOff], ErrCorrupt},
		{"footer version", mutate(good, func(c []byte) []byte { c[foot+8] = 9; return c }), ErrVersion},
		{"index crc", mutate(good, func(c []byte) []byte { c[idxOff+3] ^= 1; return c }), ErrChecksum},
		{"index offset past end", mutate(good, func(c []byte) []byte {
			binary.LittleEndian.PutUint64(c[foot+16:], 1<<40)
			return c
		}), ErrCorrupt},
		{"index length lies", mutate(good, func(c []byte) []byte {
			binary.LittleEndian.PutUint64(c[foot+24:], 5)
			return c
		}), ErrCorrupt},
		{"index not json", rewriteIndex(good, func(string) string { return "[1,2]" }), ErrCorrupt},
		{"index unknown field", rewriteIndex(good, func(s string) string { return strings.Replace(s, `"version":1`, `"version":1,"x":2`, 1) }), ErrCorrupt},
		{"index version", rewriteIndex(good, func(s string) string { return strings.Replace(s, `"version":1`, `"version":7`, 1) }), ErrVersion},
		{"no source", rewriteIndex(good, func(s string) string { return strings.Replace(s, `"kind":"safetensors"`, `"kind":"zip"`, 1) }), ErrCorrupt},
		{"duplicate name", rewriteIndex(good, func(s string) string { return strings.Replace(s, `"name":"t1"`, `"name":"t0"`, 1) }), ErrCorrupt},
		{"unknown dtype", rewriteIndex(good, func(s string) string { return strings.Replace(s, `"dtype":2`, `"dtype":999`, 1) }), ErrCorrupt},
		{"shape overflow", rewriteIndex(good, func(s string) string {
			return strings.Replace(s, `"shape":[2,2]`, `"shape":[4294967296,4294967296]`, 1)
		}), ErrCorrupt},
		{"shape disagrees with size", rewriteIndex(good, func(s string) string { return strings.Replace(s, `"shape":[2,2]`, `"shape":[2,3]`, 1) }), ErrCorrupt},
		{"negative dim", rewriteIndex(good, func(s string) string { return strings.Replace(s, `"shape":[2,2]`, `"shape":[-2,-2]`, 1) }), ErrCorrupt},
		{"record past index", rewriteIndex(good, func(s string) string { return strings.Replace(s, `"record_size":`, `"record_size":9`, 1) }), ErrCorrupt},
		{"overlapping records", rewriteIndex(good, func(s string) string {
			i := strings.LastIndex(s, `"record_offset":`)
			j := i + strings.Index(s[i:], ",")
			return s[:i] + `"record_offset":16` + s[j:]
		}), ErrCorrupt},
		{"source file out of range", rewriteIndex(good, func(s string) string { return strings.Replace(s, `"source_file":0`, `"source_file":5`, 1) }), ErrCorrupt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := NewReader(bytes.NewReader(c.b), int64(len(c.b)), "bad.tpk")
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if !strings.Contains(err.Error(), "bad.tpk") {
				t.Errorf("error %q does not name the file", err)
			}
		})
	}
}

func TestPayloadCorruption(t *testing.T) {
	good, _ := build(t, 2)
	r0, _ := NewReader(bytes.NewReader(good), int64(len(good)), "x")
	e := r0.Entries()[1]
	// Flip every bit of the second record in turn: Payload and Verify must
	// both report a problem naming the tensor.
	for off := e.RecordOffset; off < e.RecordOffset+e.RecordSize; off++ {
		for bit := 0; bit < 8; bit++ {
			c := mutate(good, func(c []byte) []byte { c[off] ^= 1 << bit; return c })
			r, err := NewReader(bytes.NewReader(c), int64(len(c)), "x")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.Payload(1); err == nil || !strings.Contains(err.Error(), `"t1"`) {
				t.Fatalf("flip at %d bit %d: Payload err = %v", off, bit, err)
			}
			if err := r.Verify(1); err == nil {
				t.Fatalf("flip at %d bit %d: Verify passed", off, bit)
			}
			if err := r.Verify(0); err != nil {
				t.Fatalf("flip in record 1 broke record 0: %v", err)
			}
		}
	}
}

func FuzzReader(f *testing.F) {
	good, _ := build(f, 2)
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := NewReader(bytes.NewReader(b), int64(len(b)), "fuzz")
		if err != nil {
			return
		}
		for i := range r.Entries() {
			p, perr := r.Payload(i)
			verr := r.Verify(i)
			if (perr == nil) != (verr == nil) {
				t.Fatalf("Payload and Verify disagree on record %d: %v / %v", i, perr, verr)
			}
			if perr == nil && int64(len(p)) != r.Entries()[i].PayloadSize {
				t.Fatalf("payload length %d, index says %d", len(p), r.Entries()[i].PayloadSize)
			}
		}
	})
}
