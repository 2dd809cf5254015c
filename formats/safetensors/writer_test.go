package safetensors

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	st "github.com/nlpodyssey/safetensors"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/tensor"
)

// mixed is a set of tensors of every dtype, in an order unrelated to
// alignment.
func mixed() []tensor.Info {
	return []tensor.Info{
		ti("model.embed.weight", tensor.BF16, 8, 4),
		ti("flag", tensor.Bool, 3),
		ti("q.weight", tensor.F8E4M3, 4, 4),
		ti("q.scale", tensor.F8E8M0, 2),
		ti("e5", tensor.F8E5M2, 5),
		ti("pos", tensor.I64, 6),
		ti("norm", tensor.F32, 4),
		ti("h", tensor.F16, 3, 3),
		ti("d", tensor.F64, 2),
		ti("i8", tensor.I8, 7),
		ti("u8", tensor.U8, 1),
		ti("i16", tensor.I16, 2),
		ti("u16", tensor.U16, 3),
		ti("i32", tensor.I32, 1),
		ti("u32", tensor.U32, 2),
		ti("u64", tensor.U64, 1),
		ti("scalar", tensor.F32),
		ti("empty", tensor.F32, 0),
	}
}

func TestRoundTripOwnFiles(t *testing.T) {
	for _, md := range []map[string]string{nil, {"format": "pt"}, {"b": "2", "a": "x\"<y>\n"}} {
		t.Run(fmt.Sprint(len(md)), func(t *testing.T) {
			ts := mixed()
			p := filepath.Join(t.TempDir(), "m.safetensors")
			if err := WriteFile(p, ts, sized(t, ts), md); err != nil {
				t.Fatal(err)
			}
			orig := readFile(t, p)
			if n := binary.LittleEndian.Uint64(orig); n%8 != 0 {
				t.Errorf("header length %d is not a multiple of 8", n)
			}
			r, err := Open(p)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			out, w := rewrite(t, r, 0)
			if !w.Verbatim() {
				t.Error("header not reproduced verbatim")
			}
			if !bytes.Equal(out, orig) {
				t.Fatalf("round trip differs:\n%q\n%q", out[:80], orig[:80])
			}
			// Regenerating the header (no original) gives the same file:
			// WriteFile and NewWriter share the reference layout.
			if _, buf := regenerate(t, r); !bytes.Equal(buf, orig) {
				t.Errorf("regenerated header differs:\n%s\n%s", buf[8:80], orig[8:80])
			}
		})
	}
}

// referenceRank is the reference implementation's Dtype enum order, which
// its serializer sorts by (descending) before names.
var referenceRank = map[tensor.DType]int{
	tensor.Bool: 0, tensor.U8: 4, tensor.I8: 5, tensor.F8E5M2: 6, tensor.F8E4M3: 7,
	tensor.F8E8M0: 8, tensor.I16: 11, tensor.U16: 12, tensor.F16: 13, tensor.BF16: 14,
	tensor.I32: 15, tensor.U32: 16, tensor.F32: 17, tensor.F64: 19, tensor.I64: 20, tensor.U64: 21,
}

// referenceFile builds a file the way the Python/Rust reference serializes
// a dict of tensors: sorted by dtype alignment (descending) then name,
// "__metadata__" first, header compact JSON padded with spaces to 8.
// It returns the file and the tensors in data order.
func referenceFile(ts []tensor.Info, data [][]byte, metadata string) ([]byte, []tensor.Info, [][]byte) {
	idx := make([]int, len(ts))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool {
		x, y := ts[idx[a]], ts[idx[b]]
		if referenceRank[x.DType] != referenceRank[y.DType] {
			return referenceRank[x.DType] > referenceRank[y.DType]
		}
		return x.Name < y.Name
	})
	var parts []string
	if metadata != "" {
		parts = append(parts, `"__metadata__":`+metadata)
	}
	var body []byte
	var order []tensor.Info
	var odata [][]byte
	for _, i := range idx {
		x := ts[i]
		dims := strings.Trim(strings.Join(strings.Fields(fmt.Sprint(x.Shape)), ","), "[]")
		parts = append(parts, fmt.Sprintf(`%q:{"dtype":%q,"shape":[%s],"data_offsets":[%d,%d]}`,
			x.Name, x.DType.String(), dims, len(body), len(body)+len(data[i])))
		body = append(body, data[i]...)
		order = append(order, x)
		odata = append(odata, data[i])
	}
	hdr := "{" + strings.Join(parts, ",") + "}"
	pad := (8 - len(hdr)%8) % 8
	return rawFile(hdr, pad, body), order, odata
}

// TestReferenceLayout checks files in the reference implementation's
// layout: they round-trip byte for byte, and NewWriter without an original
// header produces exactly that layout.
func TestReferenceLayout(t *testing.T) {
	ts := mixed()
	data := sized(t, ts)
	for _, md := range []string{"", `{"format":"pt"}`} {
		ref, order, odata := referenceFile(ts, data, md)
		p := writeTemp(t, t.TempDir(), "model.safetensors", ref)
		r, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		got := r.Tensors()
		for i := range order {
			if got[i].Name != order[i].Name {
				t.Fatalf("tensor %d is %q, want %q (data order)", i, got[i].Name, order[i].Name)
			}
		}
		if out, _ := rewrite(t, r, 0); !bytes.Equal(out, ref) {
			t.Errorf("round trip differs")
		}
		var fm *formats.FileMeta
		if md != "" {
			fm = &formats.FileMeta{Metadata: []byte(md)}
		}
		var buf bytes.Buffer
		w, err := NewWriter(&buf, order, fm)
		if err != nil {
			t.Fatal(err)
		}
		for i, x := range order {
			if err := w.WriteTensor(x, odata[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf.Bytes(), ref) {
			t.Errorf("NewWriter layout differs from the reference:\n%s\n%s", buf.Bytes()[8:120], ref[8:120])
		}
		r.Close()
	}
}

// TestReferenceVectors compares the writer with byte vectors of the
// reference implementation's own serialization tests.
func TestReferenceVectors(t *testing.T) {
	f32 := func(vals ...float32) []byte {
		var b []byte
		for _, v := range vals {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
		}
		return b
	}
	tests := []struct {
		name     string
		tensors  []tensor.Info
		data     [][]byte
		metadata []byte
		n        uint64 // header length in the reference vector
		header   string
	}{
		{"attn.0", []tensor.Info{ti("attn.0", tensor.F32, 1, 2, 3)}, [][]byte{f32(0, 1, 2, 3, 4, 5)}, nil,
			64, `{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}`},
		{"forced alignment", []tensor.Info{ti("attn0", tensor.F32, 1, 1, 2, 3)}, [][]byte{f32(0, 1, 2, 3, 4, 5)}, nil,
			72, `{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}`},
		{"empty", nil, nil, nil, 8, `{}`},
		{"empty with metadata", nil, nil, []byte(`{"framework":"pt"}`), 40, `{"__metadata__":{"framework":"pt"}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			w, err := NewWriter(&buf, tc.tensors, &formats.FileMeta{Metadata: tc.metadata})
			if err != nil {
				t.Fatal(err)
			}
			for i, x := range tc.tensors {
				if err := w.WriteTensor(x, tc.data[i]); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			want := binary.LittleEndian.AppendUint64(nil, tc.n)
			want = append(want, tc.header...)
			want = append(want, strings.Repeat(" ", int(tc.n)-len(tc.header))...)
			for _, d := range tc.data {
				want = append(want, d...)
			}
			if !bytes.Equal(buf.Bytes(), want) {
				t.Errorf("got  %q\nwant %q", buf.Bytes(), want)
			}
		})
	}
}

// upstreamView adapts bytes to the upstream library's View.
type upstreamView struct {
	dt    st.DType
	shape []uint64
	data  []byte
}

func (v upstreamView) DType() st.DType { return v.dt }
func (v upstreamView) Shape() []uint64 { return v.shape }
func (v upstreamView) Data() []byte    { return v.data }
func (v upstreamView) DataLen() uint64 { return uint64(len(v.data)) }
func toUpstream(d tensor.DType) st.DType {
	u, err := st.ParseDType(d.String())
	if err != nil {
		panic(err)
	}
	return u
}

// upstreamSet is mixed() without the types the upstream library lacks.
func upstreamSet() []tensor.Info {
	var ts []tensor.Info
	for _, x := range mixed() {
		if _, err := st.ParseDType(x.DType.String()); err == nil {
			ts = append(ts, x)
		}
	}
	return ts
}

// TestRoundTripUpstreamSerialize round-trips a file produced by the
// upstream library's Serialize (reference data order; keys sorted by Go's
// map encoding).
func TestRoundTripUpstreamSerialize(t *testing.T) {
	ts := upstreamSet()
	data := sized(t, ts)
	views := make(map[string]upstreamView)
	for i, x := range ts {
		shape := make([]uint64, len(x.Shape))
		for j, d := range x.Shape {
			shape[j] = uint64(d)
		}
		views[x.Name] = upstreamView{toUpstream(x.DType), shape, data[i]}
	}
	ref, err := st.Serialize(views, map[string]string{"format": "pt", "z": "<&>"})
	if err != nil {
		t.Fatal(err)
	}
	p := writeTemp(t, t.TempDir(), "up.safetensors", ref)
	r, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := r.Tensors()
	if len(got) != len(ts) {
		t.Fatalf("%d tensors, want %d", len(got), len(ts))
	}
	for i, x := range ts {
		j := slices.IndexFunc(got, func(y tensor.Info) bool { return y.Name == x.Name })
		if j < 0 {
			t.Fatalf("tensor %q missing", x.Name)
		}
		b, _ := r.Bytes(j)
		if !bytes.Equal(b, data[i]) || got[j].DType != x.DType || !slices.Equal(got[j].Shape, x.Shape) {
			t.Errorf("tensor %q differs: %+v", x.Name, got[j])
		}
	}
	out, w := rewrite(t, r, 0)
	if !w.Verbatim() || !bytes.Equal(out, ref) {
		t.Errorf("round trip of upstream Serialize output differs (verbatim %v)", w.Verbatim())
	}
}

// TestUpstreamReadsOurFiles checks that the upstream library accepts the
// writer's files and finds the same bytes.
func TestUpstreamReadsOurFiles(t *testing.T) {
	ts := upstreamSet()
	data := sized(t, ts)
	p := filepath.Join(t.TempDir(), "m.safetensors")
	if err := WriteFile(p, ts, data, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	got, err := st.Deserialize(readFile(t, p))
	if err != nil {
		t.Fatal(err)
	}
	for i, x := range ts {
		v, ok := got.Tensor(x.Name)
		if !ok || !bytes.Equal(v.Data(), data[i]) || v.DType() != toUpstream(x.DType) {
			t.Errorf("tensor %q: upstream reads %v %v", x.Name, ok, v.DType())
		}
	}
}

// TestWriterChangedTensors changes, drops and adds tensors: the header is
// regenerated in the original key order with the metadata where it was.
func TestWriterChangedTensors(t *testing.T) {
	hdr := `{"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"c":{"dtype":"U8","shape":[1],"data_offsets":[16,17]}}`
	p := writeTemp(t, t.TempDir(), "x.safetensors", rawFile(hdr, 3, pattern(1, 17)))
	r, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ts := r.Tensors()        // a, b, c by offset
	ts[0].DType = tensor.F16 // a becomes F16
	ts = append(ts[:2], ti("new", tensor.I16, 3))
	data := [][]byte{pattern(2, 4), pattern(3, 8), pattern(4, 6)}
	var buf bytes.Buffer
	w, err := NewWriter(&buf, ts, &r.Meta().Files[0])
	if err != nil {
		t.Fatal(err)
	}
	if w.Verbatim() {
		t.Fatal("changed file written with the original header")
	}
	for i, x := range ts {
		if err := w.WriteTensor(x, data[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	out := buf.Bytes()
	n := binary.LittleEndian.Uint64(out)
	wantHdr := `{"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},"__metadata__":{"format":"pt"},"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"new":{"dtype":"I16","shape":[3],"data_offsets":[12,18]}}`
	if got := strings.TrimRight(string(out[8:8+n]), " "); got != wantHdr || n%8 != 0 {
		t.Errorf("header (length %d)\n%s\nwant\n%s", n, got, wantHdr)
	}
	r2, err := parseFile("x", out)
	if err != nil {
		t.Fatal(err)
	}
	for k, i := range r2.order {
		e := r2.hdr.tensors[i]
		if e.name != ts[k].Name || !bytes.Equal(out[r2.dataOff+int64(e.begin):r2.dataOff+int64(e.end)], data[k]) {
			t.Errorf("tensor %q bytes differ", e.name)
		}
	}
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("disk full")
	}
	f.n--
	return len(p), nil
}

func TestWriterErrors(t *testing.T) {
	two := []tensor.Info{ti("a", tensor.F32, 2), ti("b", tensor.U8, 3)}
	type call struct {
		t    tensor.Info
		data []byte
	}
	tests := []struct {
		name    string
		tensors []tensor.Info
		fm      *formats.FileMeta
		w       io.Writer
		calls   []call
		want    string // error from NewWriter, a call, or Close
	}{
		{name: "ggml dtype", tensors: []tensor.Info{ti("q", tensor.Q4_K, 256)}, want: "cannot be stored"},
		{name: "duplicate", tensors: []tensor.Info{ti("a", tensor.U8, 1), ti("a", tensor.U8, 1)}, want: "duplicate"},
		{name: "metadata name", tensors: []tensor.Info{ti("__metadata__", tensor.U8, 1)}, want: "cannot be named"},
		{name: "invalid UTF-8 name", tensors: []tensor.Info{ti("\xff", tensor.U8, 1)}, want: "UTF-8"},
		{name: "bad shape", tensors: []tensor.Info{ti("a", tensor.U8, -1)}, want: "negative"},
		{name: "metadata not an object", tensors: two, fm: &formats.FileMeta{Metadata: []byte(`[1]`)}, want: "__metadata__"},
		{name: "metadata not strings", tensors: two, fm: &formats.FileMeta{Metadata: []byte(`{"a":1}`)}, want: "__metadata__"},
		{name: "bad original header", tensors: two, fm: &formats.FileMeta{Header: []byte(`{"a":`)}, want: "original header"},
		{name: "wrong name", tensors: two, calls: []call{{ti("b", tensor.U8, 3), make([]byte, 3)}}, want: `"b" written where "a"`},
		{name: "wrong dtype", tensors: two, calls: []call{{ti("a", tensor.I32, 2), make([]byte, 8)}}, want: "header says F32[2]"},
		{name: "wrong size", tensors: two, calls: []call{{two[0], make([]byte, 7)}}, want: "7 bytes written"},
		{name: "too many", tensors: two[:1], calls: []call{{two[0], make([]byte, 8)}, {two[1], make([]byte, 3)}}, want: "already written"},
		{name: "close early", tensors: two, calls: []call{{two[0], make([]byte, 8)}}, want: "closed after 1 of 2"},
		{name: "write error", tensors: two, w: &failWriter{1}, calls: []call{{two[0], make([]byte, 8)}}, want: "disk full"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dst := tc.w
			if dst == nil {
				dst = io.Discard
			}
			w, err := NewWriter(dst, tc.tensors, tc.fm)
			for _, c := range tc.calls {
				if err != nil {
					break
				}
				err = w.WriteTensor(c.t, c.data)
			}
			if err == nil {
				err = w.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if w != nil {
				if err2 := w.Close(); err2 == nil {
					t.Error("Close after an error succeeded")
				}
			}
		})
	}
}

// BenchmarkWriter streams 64 tensors of 1 MiB: to io.Discard (the
// Writer's own overhead) and to a file through a buffer, as DirWriter does.
func BenchmarkWriter(b *testing.B) {
	const n, size = 64, 1 << 20
	ts := make([]tensor.Info, n)
	for i := range ts {
		ts[i] = ti(fmt.Sprintf("model.layers.%d.mlp.weight", i), tensor.F16, 512, size/1024)
	}
	data := pattern(1, size)
	fm := &formats.FileMeta{Metadata: []byte(`{"format":"pt"}`)}
	run := func(b *testing.B, dst io.Writer) {
		w, err := NewWriter(dst, ts, fm)
		if err != nil {
			b.Fatal(err)
		}
		for _, x := range ts {
			if err := w.WriteTensor(x, data); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("discard", func(b *testing.B) {
		b.SetBytes(n * size)
		b.ReportAllocs()
		for b.Loop() {
			run(b, io.Discard)
		}
	})
	b.Run("file", func(b *testing.B) {
		f, err := os.Create(filepath.Join(b.TempDir(), "bench.safetensors"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		b.SetBytes(n * size)
		for b.Loop() {
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				b.Fatal(err)
			}
			bw := bufio.NewWriterSize(f, bufSize)
			run(b, bw)
			if err := bw.Flush(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkParseHeader parses the header of a 4096-tensor file.
func BenchmarkParseHeader(b *testing.B) {
	ts := make([]tensor.Info, 4096)
	for i := range ts {
		ts[i] = ti(fmt.Sprintf("model.layers.%d.self_attn.q_proj.weight", i), tensor.BF16, 4, 4)
	}
	w, err := NewWriter(io.Discard, ts, nil)
	if err != nil {
		b.Fatal(err)
	}
	hdr := w.p.prefix[8:]
	b.SetBytes(int64(len(hdr)))
	for b.Loop() {
		if _, err := parseHeader(hdr); err != nil {
			b.Fatal(err)
		}
	}
}
