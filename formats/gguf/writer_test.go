package gguf

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/tensor"
)

func roundTripTensors(rng *rand.Rand) []testTensor {
	return []testTensor{
		randomTensor(rng, "f32", tensor.F32, 3, 5),
		randomTensor(rng, "f16.3d", tensor.F16, 2, 3, 4),
		randomTensor(rng, "bf16", tensor.BF16, 7),
		randomTensor(rng, "q4_0", tensor.Q4_0, 4, 64),
		randomTensor(rng, "q4_1", tensor.Q4_1, 2, 32),
		randomTensor(rng, "q8_0", tensor.Q8_0, 3, 32),
		randomTensor(rng, "q6_k", tensor.Q6_K, 2, 256),
		randomTensor(rng, "q2_k", tensor.Q2_K, 1, 256),
		randomTensor(rng, "i32", tensor.I32, 5),
		randomTensor(rng, "f32.4d", tensor.F32, 1, 2, 3, 4),
		randomTensor(rng, "empty", tensor.F32, 0, 8),
		randomTensor(rng, "f64", tensor.F64, 3),
	}
}

// TestWriterRoundTrip writes a file from a hand-built key/value section
// with every value type, reads it back and compares everything, then
// checks that a rewrite is byte-identical.
func TestWriterRoundTrip(t *testing.T) {
	kv, m := handKV()
	kv64 := append(bytes.Clone(kv), (&enc{}).key(AlignmentKey, TypeUint32).u32(64).b...)
	m64 := append(slices.Clone(m), KV{AlignmentKey, TypeUint32, uint32(64)})
	for _, tc := range []struct {
		version uint32
		kv      []byte
		m       Metadata
		align   uint64
		tail    int64
	}{
		{3, kv, m, 32, 0},
		{2, kv, m, 32, 17},
		{3, kv64, m64, 64, 64},
	} {
		t.Run(fmt.Sprintf("v%d_align%d_tail%d", tc.version, tc.align, tc.tail), func(t *testing.T) {
			ts := roundTripTensors(rand.New(rand.NewPCG(3, uint64(tc.version))))
			var infoOrder []string
			for i := len(ts) - 1; i >= 0; i-- {
				infoOrder = append(infoOrder, ts[i].name)
			}
			file := buildFile(t, tc.version, tc.kv, uint64(len(tc.m)), tc.align, tc.tail, infoOrder, ts)
			r, err := openBytes(t, file)
			if err != nil {
				t.Fatal(err)
			}
			g := r.Meta().GGUF
			if g.Version != tc.version || g.Alignment != tc.align || g.TailPad != tc.tail || g.KVCount != uint64(len(tc.m)) || !bytes.Equal(g.KV, tc.kv) {
				t.Errorf("meta: version %d alignment %d tail %d count %d", g.Version, g.Alignment, g.TailPad, g.KVCount)
			}
			if got := r.KV(); fmt.Sprintf("%#v", got) != fmt.Sprintf("%#v", tc.m) {
				t.Errorf("KV:\n got %#v\nwant %#v", got, tc.m)
			}
			if !slices.Equal(r.InfoOrder(), infoOrder) {
				t.Errorf("InfoOrder %v, want %v", r.InfoOrder(), infoOrder)
			}
			got := r.Tensors()
			if len(got) != len(ts) {
				t.Fatalf("%d tensors, want %d", len(got), len(ts))
			}
			for i, tt := range ts {
				ti := got[i]
				if ti.Name != tt.name || ti.DType != tt.dtype || !slices.Equal(ti.Shape, tt.shape) {
					t.Errorf("tensor %d: %s %s %v, want %s %s %v", i, ti.Name, ti.DType, ti.Shape, tt.name, tt.dtype, tt.shape)
				}
				if (ti.Offset-r.DataOffset())%int64(tc.align) != 0 || ti.Size != int64(len(tt.data)) {
					t.Errorf("%s: offset %d size %d", tt.name, ti.Offset, ti.Size)
				}
				if b, err := r.Bytes(i); err != nil || !bytes.Equal(b, tt.data) {
					t.Errorf("%s: data differs (%v)", tt.name, err)
				}
			}
			if err := r.CheckReproducible(); err != nil {
				t.Error(err)
			}
			if out := rewrite(t, r); !bytes.Equal(out, file) {
				t.Errorf("rewrite differs at byte %d", firstDiff(out, file))
			}
		})
	}
}

// TestWriterDTypeChange replaces a Q4_0 tensor of the golden file by F16:
// that tensor's size and the later offsets change, nothing else does.
func TestWriterDTypeChange(t *testing.T) {
	r, err := Open(filepath.Join(goldenDir, "small.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ts := r.Tensors()
	const target = "blk.0.attn_q.weight"
	k := slices.IndexFunc(ts, func(t tensor.Info) bool { return t.Name == target })
	if k < 0 || ts[k].DType != tensor.Q4_0 {
		t.Fatalf("golden file lacks Q4_0 tensor %s", target)
	}
	src, _ := r.Bytes(k)
	vals := make([]float32, ts[k].Elems())
	if err := tensor.ToFloat32(vals, tensor.Q4_0, src); err != nil {
		t.Fatal(err)
	}
	f16 := make([]byte, 2*len(vals))
	if err := tensor.FromFloat32(f16, tensor.F16, vals); err != nil {
		t.Fatal(err)
	}
	out := slices.Clone(ts)
	out[k] = tensor.Info{Name: target, DType: tensor.F16, Shape: ts[k].Shape}

	var buf bytes.Buffer
	w, err := NewWriter(&buf, r.Meta().GGUF, r.InfoOrder(), out)
	if err != nil {
		t.Fatal(err)
	}
	for i, ti := range out {
		data, _ := r.Bytes(i)
		if i == k {
			data = f16
		}
		if err := w.WriteTensor(ti, data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r2, err := openBytes(t, buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r2.Meta().GGUF.KV, r.Meta().GGUF.KV) || r2.Meta().GGUF.TailPad != r.Meta().GGUF.TailPad {
		t.Error("metadata or tail padding changed")
	}
	ts2 := r2.Tensors()
	for i, ti := range ts2 {
		if ti.Name != out[i].Name || ti.DType != out[i].DType || !slices.Equal(ti.Shape, out[i].Shape) {
			t.Errorf("tensor %d: %v, want %v", i, ti, out[i])
		}
		if (ti.Offset-r2.DataOffset())%64 != 0 {
			t.Errorf("%s at unaligned offset %d", ti.Name, ti.Offset)
		}
		got, _ := r2.Bytes(i)
		want, _ := r.Bytes(i)
		if i == k {
			want = f16
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s: data differs", ti.Name)
		}
	}
	if ts2[k].Size != ts[k].Size/18*64 || ts2[k+1].Offset == ts[k+1].Offset {
		t.Errorf("F16 tensor has %d bytes (Q4_0 had %d) and the next offset %d (was %d)", ts2[k].Size, ts[k].Size, ts2[k+1].Offset, ts[k+1].Offset)
	}
}

func TestWriterErrors(t *testing.T) {
	kv := archKV()
	meta := func() *formats.GGUFMeta { return &formats.GGUFMeta{Version: 3, KVCount: 1, KV: kv, Alignment: 32} }
	a := tensor.Info{Name: "a", DType: tensor.F32, Shape: []int64{2, 4}}
	b := tensor.Info{Name: "b", DType: tensor.Q8_0, Shape: []int64{32}}
	ts := []tensor.Info{a, b}

	newErrs := []struct {
		name  string
		meta  *formats.GGUFMeta
		order []string
		ts    []tensor.Info
		want  error
	}{
		{"nil meta", nil, nil, ts, nil},
		{"version 1", &formats.GGUFMeta{Version: 1, KVCount: 1, KV: kv, Alignment: 32}, nil, ts, ErrUnsupportedVersion},
		{"alignment without key", &formats.GGUFMeta{Version: 3, KVCount: 1, KV: kv, Alignment: 64}, nil, ts, ErrFormat},
		{"alignment differs from key", &formats.GGUFMeta{Version: 3, KVCount: 1, KV: (&enc{}).key(AlignmentKey, TypeUint32).u32(16).b, Alignment: 32}, nil, ts, ErrFormat},
		{"kv count", &formats.GGUFMeta{Version: 3, KVCount: 2, KV: kv, Alignment: 32}, nil, ts, ErrTruncated},
		{"kv trailing bytes", &formats.GGUFMeta{Version: 3, KVCount: 1, KV: append(bytes.Clone(kv), 0), Alignment: 32}, nil, ts, ErrFormat},
		{"negative tail", &formats.GGUFMeta{Version: 3, KVCount: 1, KV: kv, Alignment: 32, TailPad: -1}, nil, ts, ErrFormat},
		{"duplicate names", meta(), nil, []tensor.Info{a, a}, ErrFormat},
		{"no ggml type", meta(), nil, []tensor.Info{{Name: "x", DType: tensor.F8E4M3, Shape: []int64{4}}}, ErrFormat},
		{"scalar", meta(), nil, []tensor.Info{{Name: "x", DType: tensor.F32}}, ErrFormat},
		{"5 dims", meta(), nil, []tensor.Info{{Name: "x", DType: tensor.F32, Shape: []int64{1, 1, 1, 1, 1}}}, ErrFormat},
		{"partial block", meta(), nil, []tensor.Info{{Name: "x", DType: tensor.Q4_0, Shape: []int64{16}}}, tensor.ErrShape},
		{"order too short", meta(), []string{"a"}, ts, ErrFormat},
		{"order unknown name", meta(), []string{"a", "c"}, ts, ErrFormat},
		{"order repeats", meta(), []string{"a", "a"}, ts, ErrFormat},
	}
	for _, tc := range newErrs {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewWriter(io.Discard, tc.meta, tc.order, tc.ts)
			if err == nil {
				t.Fatal("NewWriter succeeded")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("error %q is not %q", err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "gguf: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}

	dataA, dataB := make([]byte, 32), make([]byte, 34)
	writeErrs := []struct {
		name  string
		steps func(w *Writer) error
		want  error
	}{
		{"wrong name", func(w *Writer) error { return w.WriteTensor(b, dataB) }, ErrWriteOrder},
		{"wrong dtype", func(w *Writer) error {
			return w.WriteTensor(tensor.Info{Name: "a", DType: tensor.F16, Shape: a.Shape}, dataA[:16])
		}, ErrWriteOrder},
		{"wrong shape", func(w *Writer) error {
			return w.WriteTensor(tensor.Info{Name: "a", DType: tensor.F32, Shape: []int64{8}}, dataA)
		}, ErrWriteOrder},
		{"short data", func(w *Writer) error { return w.WriteTensor(a, dataA[:31]) }, ErrWriteSize},
		{"too many", func(w *Writer) error {
			w.WriteTensor(a, dataA)
			w.WriteTensor(b, dataB)
			return w.WriteTensor(b, dataB)
		}, ErrWriteOrder},
		{"close early", func(w *Writer) error { w.WriteTensor(a, dataA); return w.Close() }, ErrIncomplete},
		{"write after close", func(w *Writer) error {
			w.WriteTensor(a, dataA)
			w.WriteTensor(b, dataB)
			if err := w.Close(); err != nil {
				return err
			}
			return w.WriteTensor(b, dataB)
		}, ErrClosed},
	}
	for _, tc := range writeErrs {
		t.Run(tc.name, func(t *testing.T) {
			w, err := NewWriter(io.Discard, meta(), nil, ts)
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.steps(w); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// recorder counts written bytes and remembers the largest single write.
type recorder struct {
	n, largest int64
	failAfter  int64 // fail writes that would go past this many bytes; 0 = never
}

var errDiskFull = errors.New("disk full")

func (r *recorder) Write(p []byte) (int, error) {
	if r.failAfter > 0 && r.n+int64(len(p)) > r.failAfter {
		k := r.failAfter - r.n
		r.n += k
		return int(k), errDiskFull
	}
	r.n += int64(len(p))
	r.largest = max(r.largest, int64(len(p)))
	return len(p), nil
}

// TestWriterStreams checks that every byte is passed on as soon as it is
// known: the header by NewWriter, each tensor by its WriteTensor.
func TestWriterStreams(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	ts := roundTripTensors(rng)
	kv, m := handKV()
	infos := make([]tensor.Info, len(ts))
	for i, tt := range ts {
		infos[i] = tt.info()
	}
	rec := &recorder{}
	w, err := NewWriter(rec, &formats.GGUFMeta{Version: 3, KVCount: uint64(len(m)), KV: kv, Alignment: 32, TailPad: 5}, nil, infos)
	if err != nil {
		t.Fatal(err)
	}
	file := buildFile(t, 3, kv, uint64(len(m)), 32, 5, nil, ts)
	r, err := parse("f", file)
	if err != nil {
		t.Fatal(err)
	}
	if rec.n != r.DataOffset() {
		t.Errorf("after NewWriter %d bytes written, want the %d-byte header", rec.n, r.DataOffset())
	}
	want := r.Tensors()
	for i, tt := range ts {
		if err := w.WriteTensor(infos[i], tt.data); err != nil {
			t.Fatal(err)
		}
		if end := want[i].Offset + want[i].Size; rec.n != end {
			t.Errorf("after %s: %d bytes written, want %d", tt.name, rec.n, end)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if rec.n != int64(len(file)) || w.Size() != rec.n {
		t.Errorf("wrote %d bytes, Size %d, want %d", rec.n, w.Size(), len(file))
	}
	var biggest int64 = int64(len(kv))
	for _, tt := range ts {
		biggest = max(biggest, int64(len(tt.data)))
	}
	if rec.largest > max(biggest, int64(len(zeroBlock)), r.infoEnd) {
		t.Errorf("largest write %d bytes, more than any single part (%d)", rec.largest, biggest)
	}
}

// TestWriterWriteError checks that a failed write is reported and sticks.
func TestWriterWriteError(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	ts := roundTripTensors(rng)
	infos := make([]tensor.Info, len(ts))
	for i, tt := range ts {
		infos[i] = tt.info()
	}
	meta := &formats.GGUFMeta{Version: 3, KVCount: 1, KV: archKV(), Alignment: 32}
	if _, err := NewWriter(&recorder{failAfter: 10}, meta, nil, infos); !errors.Is(err, errDiskFull) {
		t.Fatalf("NewWriter on a failing writer: %v", err)
	}
	rec := &recorder{}
	w, err := NewWriter(rec, meta, nil, infos)
	if err != nil {
		t.Fatal(err)
	}
	rec.failAfter = rec.n + 40
	err = w.WriteTensor(infos[0], ts[0].data)
	if err == nil {
		err = w.WriteTensor(infos[1], ts[1].data)
	}
	if !errors.Is(err, errDiskFull) {
		t.Fatalf("got %v, want the writer's error", err)
	}
	if err := w.Close(); !errors.Is(err, errDiskFull) {
		t.Errorf("Close after a failed write: %v", err)
	}
}
