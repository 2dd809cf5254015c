package stream

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/formats/tpk"
	"github.com/tpconvert/tpconvert/tensor"
)

// compressTPK is Compress into a .tpk file written to w.
func compressTPK(ctx context.Context, src formats.Source, w io.Writer, o CompressOptions) ([]Result, error) {
	tw, err := tpk.NewWriter(CancelWriter(ctx, w), src.Meta())
	if err != nil {
		return nil, err
	}
	res, err := Compress(ctx, src, tw, o)
	if err != nil {
		return nil, err
	}
	return res, tw.Close()
}

// memRecords is a record container held in memory: a RecordSink and,
// once written, a RecordSource.
type memRecords struct {
	meta *formats.Meta
	recs []formats.Record
	pays [][]byte
	open *formats.Record
	cur  []byte
}

func (m *memRecords) WriteRecord(r formats.Record, payload ...[]byte) error {
	var n int64
	for _, p := range payload {
		n += int64(len(p))
	}
	if err := m.BeginRecord(r, n); err != nil {
		return err
	}
	for _, p := range payload {
		if err := m.WritePayload(p); err != nil {
			return err
		}
	}
	return m.EndRecord()
}

func (m *memRecords) BeginRecord(r formats.Record, size int64) error {
	if m.open != nil {
		return fmt.Errorf("record %q begun inside %q", r.Name, m.open.Name)
	}
	r.PayloadSize = size
	m.open, m.cur = &r, nil
	return nil
}

func (m *memRecords) WritePayload(p []byte) error {
	if m.open == nil {
		return errors.New("payload outside a record")
	}
	m.cur = append(m.cur, p...)
	return nil
}

func (m *memRecords) EndRecord() error {
	if m.open == nil || int64(len(m.cur)) != m.open.PayloadSize {
		return errors.New("record ended with a payload of another size")
	}
	m.recs, m.pays, m.open = append(m.recs, *m.open), append(m.pays, m.cur), nil
	return nil
}

func (m *memRecords) Last() formats.Record { return m.recs[len(m.recs)-1] }
func (m *memRecords) Close() error         { return nil }
func (m *memRecords) Name() string         { return "mem" }
func (m *memRecords) Meta() *formats.Meta  { return m.meta }
func (m *memRecords) Entries() []formats.Record {
	return m.recs
}
func (m *memRecords) Payload(i int) ([]byte, error) { return m.pays[i], nil }
func (m *memRecords) PayloadParts(i int) ([]byte, formats.PayloadHash, error) {
	return m.pays[i], checked{}, nil
}
func (m *memRecords) VerifyContext(context.Context, int) error { return nil }
func (m *memRecords) Release(int)                              {}
func (m *memRecords) ReleasePayload(int, int64, int64)         {}
func (m *memRecords) Size() int64                              { return 0 }
func (m *memRecords) Corrupt(i int, off int64, err error) error {
	return &formats.Error{File: "mem", Tensor: m.recs[i].Name, Offset: off, Err: err}
}

type checked struct{}

func (checked) Add([]byte)   {}
func (checked) Check() error { return nil }

// memSink is a Sink (and PartSink) that keeps what it is given.
type memSink struct{ got map[string][]byte }

func (s *memSink) WriteTensor(t tensor.Info, data []byte) error {
	return s.WriteTensorPart(t, 0, data)
}
func (s *memSink) WriteTensorPart(t tensor.Info, off int64, data []byte) error {
	if int64(len(s.got[t.Name])) != off {
		return fmt.Errorf("tensor %q: part at %d after %d bytes", t.Name, off, len(s.got[t.Name]))
	}
	s.got[t.Name] = append(s.got[t.Name], data...)
	return nil
}
func (s *memSink) Close() error { return nil }

// TestRecordSeams: the pipeline writes the same records and restores the
// same tensors through any RecordSink and RecordSource as through the
// .tpk container, whole and in row chunks.
func TestRecordSeams(t *testing.T) {
	const big = "model.layers.0.mlp.up_proj.weight"
	src := newMemSource(map[string][]int64{big: {256, 64}, "model.norm.weight": {64}, "lm_head.weight": {32, 64}},
		"model.norm.weight", big, "lm_head.weight")
	for _, name := range []string{"none", "f16", "int8"} {
		c, err := codec.New(name, codec.Options{})
		if err != nil {
			t.Fatal(err)
		}
		o := CompressOptions{Options: Options{Workers: 2, MaxMemory: 64 << 10}, Codec: c,
			Select: func(t tensor.Info) bool { return t.Name != "model.norm.weight" }}
		var buf bytes.Buffer
		if _, err := compressTPK(context.Background(), src, &buf, o); err != nil {
			t.Fatal(err)
		}
		tr, err := tpk.NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()), "m.tpk")
		if err != nil {
			t.Fatal(err)
		}
		mem := &memRecords{meta: src.Meta()}
		res, err := Compress(context.Background(), src, mem, o)
		if err != nil {
			t.Fatal(err)
		}
		if len(mem.recs) != len(tr.Entries()) || len(res) != len(mem.recs) {
			t.Fatalf("%s: %d records in memory, %d in the .tpk, %d results", name, len(mem.recs), len(tr.Entries()), len(res))
		}
		for i, e := range tr.Entries() {
			m := mem.recs[i]
			p, err := tr.Payload(i)
			if err != nil {
				t.Fatal(err)
			}
			if m.Name != e.Name || m.CodecID != e.CodecID || m.Params != e.Params || fmt.Sprint(m.Stats) != fmt.Sprint(e.Stats) || !bytes.Equal(mem.pays[i], p) {
				t.Errorf("%s: record %d: %+v in memory, %+v in the .tpk (payloads equal: %v)", name, i, m, e, bytes.Equal(mem.pays[i], p))
			}
			if res[i].Entry.Name != m.Name {
				t.Errorf("%s: result %d names %q", name, i, res[i].Entry.Name)
			}
		}
		outs := make([]map[string][]byte, 2)
		for k, rs := range []formats.RecordSource{mem, tr} {
			ro := RestoreOptions{Options: Options{Workers: 2, MaxMemory: 64 << 10}}
			plan, err := Plan(rs, ro)
			if err != nil {
				t.Fatal(err)
			}
			sink := &memSink{got: map[string][]byte{}}
			if err := Restore(context.Background(), rs, plan, sink, ro); err != nil {
				t.Fatal(err)
			}
			outs[k] = sink.got
		}
		if fmt.Sprint(outs[0]) != fmt.Sprint(outs[1]) || len(outs[0]) != 3 {
			t.Errorf("%s: restored from memory and from the .tpk differ", name)
		}
		if !bytes.Equal(outs[0]["model.norm.weight"], src.data[0]) || (name == "none" && !bytes.Equal(outs[0][big], src.data[1])) {
			t.Errorf("%s: a tensor stored unchanged did not come back bit-exact", name)
		}
	}
}
