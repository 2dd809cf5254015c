package convert_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	_ "github.com/tpconvert/tpconvert/codec/intq"
	_ "github.com/tpconvert/tpconvert/codec/lossless"
	"github.com/tpconvert/tpconvert/codec/numtest"
	_ "github.com/tpconvert/tpconvert/codec/tenpakx"
	"github.com/tpconvert/tpconvert/formats"
	_ "github.com/tpconvert/tpconvert/formats/gguf" // ggml dequantizers
	"github.com/tpconvert/tpconvert/formats/tpk"
	"github.com/tpconvert/tpconvert/stream"
	"github.com/tpconvert/tpconvert/tensor"
)

var updateRestoreCorpus = flag.Bool("update-restore-corpus", false, "rewrite the seed corpus in testdata/fuzz/FuzzRestore")

// fuzzMaxElems caps the tensors FuzzRestore decodes directly (larger ones
// are left to the pipeline, which must refuse or decode them within the
// allocation bound).
const fuzzMaxElems = 1 << 20

// elemsPerByte is the bound the restore pipeline puts on elements per
// payload byte before it allocates (stream's maxElemsPerPayloadByte).
const elemsPerByte = 64

// seedTPK builds a small .tpk whose records use every codec: an F32 4×8
// matrix per codec, the same matrix stored transposed (as a GPT-2 Conv1D
// weight is), a BF16 matrix through int8, and a Q8_0 tensor stored
// unchanged. kind chooses the source container recorded in the index.
func seedTPK(tb testing.TB, kind formats.Kind) []byte {
	tb.Helper()
	meta := &formats.Meta{Kind: kind, Files: []formats.FileMeta{{Name: "m." + string(kind), Metadata: []byte(`{"format":"pt"}`), Size: 4096}}}
	if kind == formats.GGUF {
		kv := binary.LittleEndian.AppendUint64(nil, uint64(len("general.architecture")))
		kv = append(kv, "general.architecture"...)
		kv = binary.LittleEndian.AppendUint32(kv, 8)
		kv = binary.LittleEndian.AppendUint64(kv, 5)
		kv = append(kv, "llama"...)
		meta.Files[0].Metadata = nil
		meta.GGUF = &formats.GGUFMeta{Version: 3, KVCount: 1, KV: kv, Alignment: 32}
	}
	var buf bytes.Buffer
	w, err := tpk.NewWriter(&buf, meta)
	if err != nil {
		tb.Fatal(err)
	}
	x := make([]float32, 32)
	for i := range x {
		x[i] = float32(math.Sin(float64(3*i+1))) * 0.5
	}
	add := func(name string, dt tensor.DType, shape []int64, cname string, transposed bool, vals []float32) {
		c, err := codec.New(cname, numtest.Options(cname, codec.Options{Rank: 2, GroupSize: 4}))
		if err != nil {
			tb.Fatal(err)
		}
		info := tensor.Info{Name: name, DType: dt, Shape: shape}
		src := make([]byte, len(vals)*int(dt.BlockBytes()))
		if err := tensor.FromFloat32(src, dt, vals); err != nil {
			tb.Fatal(err)
		}
		info.Size = int64(len(src))
		e := tpk.Entry{Name: name, DType: dt, Shape: shape, Codec: c.Name(), CodecID: c.ID(), CodecVersion: c.Version(),
			Params: c.Params(), Transposed: transposed, SourceSize: info.Size}
		var p bytes.Buffer
		if bc, ok := c.(codec.ByteCodec); ok {
			err = bc.EncodeBytes(&p, info, src)
		} else {
			ct := info.Clone()
			v := vals
			if transposed {
				ct.Shape = []int64{shape[1], shape[0]}
				v = transposeF32(vals, int(shape[0]), int(shape[1]))
			}
			err = c.Encode(&p, ct, v)
		}
		if err != nil {
			tb.Fatalf("%s: %v", name, err)
		}
		if err := w.WriteRecord(e, p.Bytes()); err != nil {
			tb.Fatal(err)
		}
	}
	for _, c := range []string{"none", "f16", "bf16", "int8", "int4", "tenpak_x_v1", "tenpak_x_v2", "lossless"} {
		add("w."+c, tensor.F32, []int64{4, 8}, c, false, x)
	}
	add("conv.int4", tensor.F32, []int64{8, 4}, "int4", true, x)
	add("bf16.int8", tensor.BF16, []int64{4, 8}, "int8", false, x)
	add("bf16.lossless", tensor.BF16, []int64{4, 8}, "lossless", false, x)
	q := make([]byte, 34) // one Q8_0 block: FP16 scale 0.5, codes -16..15
	binary.LittleEndian.PutUint16(q, 0x3800)
	for k := range 32 {
		q[2+k] = byte(int8(k - 16))
	}
	if err := w.WriteRecord(tpk.Entry{Name: "q8", DType: tensor.Q8_0, Shape: []int64{32}, Codec: "none", CodecVersion: 1, SourceSize: 34}, q); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// seedRecordEdit rebuilds b with record i's entry and payload changed by
// f; checksums stay valid.
func seedRecordEdit(tb testing.TB, b []byte, name string, f func(e *tpk.Entry, p []byte) []byte) []byte {
	tb.Helper()
	r, err := tpk.NewReader(bytes.NewReader(b), int64(len(b)), "seed")
	if err != nil {
		tb.Fatal(err)
	}
	var out bytes.Buffer
	w, err := tpk.NewWriter(&out, r.Meta())
	if err != nil {
		tb.Fatal(err)
	}
	for i, e := range r.Entries() {
		p, err := r.Payload(i)
		if err != nil {
			tb.Fatal(err)
		}
		if e.Name == name {
			p = f(&e, slices.Clone(p))
		}
		if err := w.WriteRecord(e, p); err != nil {
			tb.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return out.Bytes()
}

// restoreSeeds are the seed inputs of FuzzRestore: valid files, and files
// that once crashed or could exhaust memory (a lying shape, a transposed
// vector, an unchanged payload of the wrong size).
func restoreSeeds(tb testing.TB) map[string][]byte {
	st := seedTPK(tb, formats.Safetensors)
	return map[string][]byte{
		"codecs":  st,
		"gguf":    seedTPK(tb, formats.GGUF),
		"lie_f16": seedRecordEdit(tb, st, "w.f16", func(e *tpk.Entry, p []byte) []byte { e.Shape, e.SourceSize = []int64{1 << 36}, 1<<38; return p }),
		"lie_tenpak": seedRecordEdit(tb, st, "w.tenpak_x_v1", func(e *tpk.Entry, p []byte) []byte {
			e.Shape, e.SourceSize = []int64{1 << 20, 1 << 20}, 1<<42
			return p
		}),
		"transposed_vector": seedRecordEdit(tb, st, "w.f16", func(e *tpk.Entry, p []byte) []byte {
			e.Shape, e.SourceSize, e.Transposed = []int64{32}, 128, true
			return p
		}),
		"lie_lossless": seedRecordEdit(tb, st, "w.lossless", func(e *tpk.Entry, p []byte) []byte {
			e.Shape, e.SourceSize = []int64{1 << 20, 1 << 20}, 1<<42
			return p
		}),
		"none_short": seedRecordEdit(tb, st, "w.none", func(e *tpk.Entry, p []byte) []byte { return p[:len(p)-4] }),
	}
}

// TestRestoreCorpus writes the seeds to testdata/fuzz/FuzzRestore when run
// with -update-restore-corpus (each with the repair flag off and on).
func TestRestoreCorpus(t *testing.T) {
	if !*updateRestoreCorpus {
		t.Skip("run with -update-restore-corpus to rewrite testdata/fuzz/FuzzRestore")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzRestore")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range restoreSeeds(t) {
		for _, repair := range []bool{false, true} {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nbool(%v)\n", b, repair)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed_%s_%v", name, repair)), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

var fuzzCRCTable = crc32.MakeTable(crc32.Castagnoli)

// repairChecksums returns a copy of b whose checksums are made valid, so
// that mutations reach the record headers, payloads and index fields
// behind them: every record the index locates inside the file gets its
// CRC32C recomputed (in the record and in the index), and the footer gets
// the index's length and CRC32C. An index that is not JSON is kept as it
// is.
func repairChecksums(b []byte) []byte {
	b = slices.Clone(b)
	n := int64(len(b))
	if n < tpk.HeaderSize+tpk.FooterSize {
		return b
	}
	ft := b[n-tpk.FooterSize:]
	off := binary.LittleEndian.Uint64(ft[16:])
	if off < tpk.HeaderSize || off > uint64(n-tpk.FooterSize) {
		return b
	}
	js := b[off : n-tpk.FooterSize]
	var ix tpk.Index
	if json.Unmarshal(js, &ix) == nil {
		for i := range ix.Tensors {
			e := &ix.Tensors[i]
			if e.RecordOffset < 0 || e.RecordSize < 4 || e.RecordOffset > int64(off) || e.RecordSize > int64(off)-e.RecordOffset {
				continue
			}
			rec := b[e.RecordOffset : e.RecordOffset+e.RecordSize]
			e.CRC32C = crc32.Checksum(rec[:len(rec)-4], fuzzCRCTable)
			binary.LittleEndian.PutUint32(rec[len(rec)-4:], e.CRC32C)
		}
		if j, err := json.Marshal(&ix); err == nil {
			js = j
		}
	}
	out := append(b[:off:off], js...)
	var f [tpk.FooterSize]byte
	copy(f[:], ft)
	binary.LittleEndian.PutUint32(f[12:], crc32.Checksum(js, fuzzCRCTable))
	binary.LittleEndian.PutUint64(f[24:], uint64(len(js)))
	return append(out, f[:]...)
}

// memSink collects what the restore pipeline writes and checks that it
// writes the planned tensors, in order, each of its planned size.
// It runs on the pipeline's writer goroutine, so it records a violation
// (and stops the pipeline with it) for the test goroutine to report.
type memSink struct {
	plan []tensor.Info
	got  [][]byte
	bad  error
}

func (s *memSink) WriteTensor(t tensor.Info, data []byte) error {
	i := len(s.got)
	if i >= len(s.plan) || t.Name != s.plan[i].Name || t.DType != s.plan[i].DType || int64(len(data)) != s.plan[i].Size {
		s.bad = fmt.Errorf("pipeline wrote %s %s of %d bytes as tensor %d; plan %v", t.Name, t.DType, len(data), i, s.plan)
		return s.bad
	}
	s.got = append(s.got, bytes.Clone(data))
	return nil
}

func (s *memSink) Close() error { return nil }

func transposeF32(x []float32, rows, cols int) []float32 {
	y := make([]float32, len(x))
	for r := range rows {
		for c := range cols {
			y[c*rows+r] = x[r*cols+c]
		}
	}
	return y
}

func allocatedBy(f func()) uint64 {
	var a, b runtime.MemStats
	runtime.ReadMemStats(&a)
	f()
	runtime.ReadMemStats(&b)
	return b.TotalAlloc - a.TotalAlloc
}

// FuzzRestore reads a whole .tpk file from bytes (with its checksums
// repaired first when repair is set) and decodes every record two ways:
// directly, through codec.ByID and Decode into a destination whose size is
// checked against the payload first, and through the restore pipeline into
// a memory sink. Nothing may panic; errors must be the packages' own
// (tpk.Error, codec.ErrCorrupt, codec.ErrUnknown); Payload and Verify must
// agree; one Decode may allocate at most 8·(payload + 4·elements) + 1 MiB
// and a whole restore at most 1 MiB per record plus 3 KiB per input byte
// plus 16 bytes per output byte; decoding is deterministic; a restore that
// succeeds writes exactly what the direct decodes give; and a file that
// parses is rewritten by tpk.Writer into one with the same records, and
// rewriting that gives the same bytes.
func FuzzRestore(f *testing.F) {
	for _, b := range restoreSeeds(f) {
		f.Add(b, false)
		f.Add(b, true)
	}
	f.Fuzz(func(t *testing.T, file []byte, repair bool) {
		if repair {
			file = repairChecksums(file)
		}
		r, err := tpk.NewReader(bytes.NewReader(file), int64(len(file)), "fuzz.tpk")
		if err != nil {
			var te *tpk.Error
			if !errors.As(err, &te) {
				t.Fatalf("NewReader error is not a *tpk.Error: %v", err)
			}
			return
		}
		es := r.Entries()
		payloads := make([][]byte, len(es))
		decoded := make([][]float32, len(es)) // nil: not decoded directly
		allRead := true
		for i := range es {
			e := &es[i]
			p, perr := r.Payload(i)
			verr := r.Verify(i)
			if (perr == nil) != (verr == nil) {
				t.Fatalf("record %d: Payload and Verify disagree: %v / %v", i, perr, verr)
			}
			if perr != nil {
				allRead = false
				continue
			}
			payloads[i] = p
			c, err := codec.ByID(e.CodecID)
			if err != nil {
				if !errors.Is(err, codec.ErrUnknown) {
					t.Fatalf("codec.ByID(%d): %v", e.CodecID, err)
				}
				continue
			}
			n := e.Info().Elems()
			if n > elemsPerByte*int64(len(p)) || n > fuzzMaxElems {
				continue // the pipeline must refuse it (checked below) or it is too big to fuzz
			}
			info := e.Info()
			if e.Transposed && len(e.Shape) != 2 {
				t.Fatalf("record %q: reader accepted a transposed record of %d dimensions", e.Name, len(e.Shape))
			}
			if e.Transposed {
				info.Shape = []int64{e.Shape[1], e.Shape[0]}
			}
			dst := make([]float32, n)
			var derr error
			a := allocatedBy(func() { derr = c.Decode(dst, p, info, e.CodecVersion) })
			if limit := 8*(uint64(len(p))+4*uint64(n)) + 1<<20; a > limit {
				t.Fatalf("record %q: Decode of %d bytes for %d elements allocated %d bytes (limit %d)", e.Name, len(p), n, a, limit)
			}
			if derr != nil {
				if !errors.Is(derr, codec.ErrCorrupt) {
					t.Fatalf("record %q: Decode error does not wrap codec.ErrCorrupt: %v", e.Name, derr)
				}
				continue
			}
			again := make([]float32, n)
			if err := c.Decode(again, p, info, e.CodecVersion); err != nil {
				t.Fatalf("record %q: second Decode failed: %v", e.Name, err)
			}
			for k := range dst {
				if math.Float32bits(dst[k]) != math.Float32bits(again[k]) {
					t.Fatalf("record %q: Decode is not deterministic at element %d", e.Name, k)
				}
			}
			if e.Transposed {
				dst = transposeF32(dst, int(e.Shape[1]), int(e.Shape[0]))
			}
			decoded[i] = dst
		}

		checkPipeline(t, r, payloads, decoded, int64(len(file)))
		if allRead {
			checkRewrite(t, r, payloads)
		}
	})
}

// checkPipeline restores r through stream.Restore into a memory sink.
func checkPipeline(t *testing.T, r *tpk.Reader, payloads [][]byte, decoded [][]float32, size int64) {
	plan, err := stream.Plan(r, stream.RestoreOptions{})
	if err != nil {
		return
	}
	var out int64
	for _, p := range plan {
		out += p.Size
	}
	sink := &memSink{plan: plan}
	var rerr error
	a := allocatedBy(func() {
		rerr = stream.Restore(context.Background(), r, plan, sink, stream.RestoreOptions{Options: stream.Options{Workers: 2, MaxMemory: 64 << 20}})
	})
	if sink.bad != nil {
		t.Fatal(sink.bad)
	}
	es := r.Entries()
	if limit := uint64(len(es))<<20 + 3<<10*uint64(size) + 16*uint64(out); a > limit {
		t.Fatalf("restore of a %d-byte file allocated %d bytes (limit %d); error %v", size, a, limit, rerr)
	}
	if rerr != nil {
		return
	}
	for i := range es {
		e := &es[i]
		if n := e.Info().Elems(); e.CodecID != codec.IDNone && n > elemsPerByte*int64(len(payloads[i])) {
			t.Fatalf("record %q: restored %d elements from %d payload bytes", e.Name, n, len(payloads[i]))
		}
		want := payloads[i]
		if decoded[i] != nil && (e.CodecID != codec.IDNone || plan[i].DType != e.DType) {
			want = make([]byte, plan[i].Size)
			if err := tensor.FromFloat32(want, plan[i].DType, decoded[i]); err != nil {
				t.Fatal(err)
			}
		} else if e.CodecID != codec.IDNone || plan[i].DType != e.DType {
			if e.Info().Elems() <= fuzzMaxElems {
				t.Fatalf("record %q: restore decoded it, a direct Decode did not", e.Name)
			}
			continue
		}
		if !bytes.Equal(sink.got[i], want) {
			t.Fatalf("record %q: restore wrote other bytes than the direct decode", e.Name)
		}
	}
}

// checkRewrite writes r's records again with tpk.Writer: the result must
// read back with the same entries and payloads, and writing it once more
// must give identical bytes.
func checkRewrite(t *testing.T, r *tpk.Reader, payloads [][]byte) {
	write := func(meta *formats.Meta, es []tpk.Entry, ps [][]byte) []byte {
		var buf bytes.Buffer
		w, err := tpk.NewWriter(&buf, meta)
		if err != nil {
			t.Fatal(err)
		}
		for i, e := range es {
			if err := w.WriteRecord(e, ps[i]); err != nil {
				t.Fatalf("writer refuses record %q the reader accepted: %v", e.Name, err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	b1 := write(r.Meta(), r.Entries(), payloads)
	r1, err := tpk.NewReader(bytes.NewReader(b1), int64(len(b1)), "rewrite.tpk")
	if err != nil {
		t.Fatalf("rewritten file does not open: %v", err)
	}
	if len(r1.Entries()) != len(r.Entries()) {
		t.Fatalf("rewrite has %d records, want %d", len(r1.Entries()), len(r.Entries()))
	}
	ps := make([][]byte, len(payloads))
	for i, e := range r1.Entries() {
		o := r.Entries()[i]
		if e.Name != o.Name || e.DType != o.DType || !slices.Equal(e.Shape, o.Shape) || e.Codec != o.Codec || e.CodecID != o.CodecID ||
			e.CodecVersion != o.CodecVersion || e.Params != o.Params || e.Transposed != o.Transposed || e.SourceFile != o.SourceFile ||
			e.SourceSize != o.SourceSize || e.PayloadSize != o.PayloadSize {
			t.Fatalf("record %d: %+v became %+v", i, o, e)
		}
		p, err := r1.Payload(i)
		if err != nil || !bytes.Equal(p, payloads[i]) {
			t.Fatalf("record %q: payload changed in the rewrite (%v)", e.Name, err)
		}
		ps[i] = p
	}
	if b2 := write(r1.Meta(), r1.Entries(), ps); !bytes.Equal(b1, b2) {
		t.Fatal("rewriting a rewritten file changed it")
	}
}
