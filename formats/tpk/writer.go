package tpk

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"slices"
	"unicode/utf8"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/formats/gguf"
	"github.com/tpconvert/tpconvert/tensor"
)

// Writer appends records to a .tpk file. It writes sequentially and never
// seeks, so it can write to a pipe.
type Writer struct {
	bw      *bufio.Writer
	off     int64
	idx     Index
	names   map[string]bool
	closed  bool
	scratch []byte
	open    *Entry // the record begun and not yet ended
}

// createdBy is written to the index of every file.
const createdBy = "tpconvert"

// NewWriter writes the file header to w and returns a Writer. meta
// describes the source checkpoint; ggufInfoOrder is the GGUF tensor-info
// order if it differs from record order.
func NewWriter(w io.Writer, meta *formats.Meta, ggufInfoOrder []string) (*Writer, error) {
	if meta == nil {
		return nil, errors.New("tpk: NewWriter needs the source metadata")
	}
	// Refuse now what a reader of the finished file would refuse.
	if err := meta.Check(); err != nil {
		return nil, fmt.Errorf("tpk: %w", err)
	}
	if meta.Kind == formats.GGUF {
		if err := gguf.CheckMeta(meta.GGUF); err != nil {
			return nil, fmt.Errorf("tpk: %w", err)
		}
	}
	tw := &Writer{
		bw:    bufio.NewWriterSize(w, 1<<20),
		names: map[string]bool{},
		idx:   Index{Version: Version, CreatedBy: createdBy, Source: meta, GGUFInfoOrder: ggufInfoOrder},
	}
	var h [HeaderSize]byte
	copy(h[:], magic[:])
	binary.LittleEndian.PutUint16(h[8:], Version)
	if err := tw.write(h[:]); err != nil {
		return nil, err
	}
	return tw, nil
}

func (w *Writer) write(b []byte) error {
	n, err := w.bw.Write(b)
	w.off += int64(n)
	return err
}

// WriteRecord appends one tensor record. e describes the tensor and codec
// (Name, DType, Shape, Codec, CodecID, CodecVersion, Params, Transposed,
// SourceFile, SourceSize, Stats); the offsets, sizes and checksum are filled
// in here. payload is written as the concatenation of its parts.
func (w *Writer) WriteRecord(e Entry, payload ...[]byte) error {
	var n int64
	for _, p := range payload {
		n += int64(len(p))
	}
	if err := w.BeginRecord(e, n); err != nil {
		return err
	}
	for _, p := range payload {
		if err := w.WritePayload(p); err != nil {
			return err
		}
	}
	return w.EndRecord()
}

// BeginRecord starts a record whose payload of size bytes follows in
// WritePayload calls, so that a payload larger than memory is written in
// parts; EndRecord finishes it. e is as for WriteRecord.
func (w *Writer) BeginRecord(e Entry, size int64) error {
	if w.closed {
		return errors.New("tpk: write after Close")
	}
	if w.open != nil {
		return fmt.Errorf("tpk: tensor %q begun before %q ended", e.Name, w.open.Name)
	}
	switch {
	case len(e.Name) == 0 || len(e.Name) > MaxNameLen:
		return fmt.Errorf("tpk: tensor name of %d bytes (1-%d allowed)", len(e.Name), MaxNameLen)
	case !utf8.ValidString(e.Name):
		return fmt.Errorf("tpk: tensor name %q is not valid UTF-8 (the index is JSON)", e.Name)
	case w.names[e.Name]:
		return fmt.Errorf("tpk: tensor %q written twice", e.Name)
	case len(e.Shape) > MaxDims:
		return fmt.Errorf("tpk: tensor %q has %d dimensions (at most %d)", e.Name, len(e.Shape), MaxDims)
	case len(e.Params) > MaxParamsLen:
		return fmt.Errorf("tpk: tensor %q: codec parameters too long", e.Name)
	case len(w.idx.Tensors) >= MaxTensors:
		return fmt.Errorf("tpk: more than %d tensors", MaxTensors)
	case size < 0:
		return fmt.Errorf("tpk: tensor %q: payload of %d bytes", e.Name, size)
	}
	if _, err := tensor.NumElems(e.Shape); err != nil {
		return fmt.Errorf("tpk: tensor %q: %w", e.Name, err)
	}
	e.Shape = append([]int64(nil), e.Shape...)
	e.PayloadSize = size
	e.RecordOffset = w.off
	hdr := appendRecordHeader(w.scratch[:0], &e)
	pre := make([]byte, 0, 8)
	pre = append(pre, recMagic[:]...)
	pre = binary.LittleEndian.AppendUint32(pre, uint32(len(hdr)))
	crc := crc32.Update(0, castagnoli, pre)
	crc = crc32.Update(crc, castagnoli, hdr)
	if err := w.write(pre); err != nil {
		return err
	}
	if err := w.write(hdr); err != nil {
		return err
	}
	w.scratch = hdr[:0]
	e.PayloadOffset = w.off
	e.CRC32C = crc
	w.open = &e
	return nil
}

// WritePayload writes the next part of the payload of the record begun by
// BeginRecord.
func (w *Writer) WritePayload(p []byte) error {
	e := w.open
	if e == nil {
		return errors.New("tpk: payload written outside a record")
	}
	if w.off+int64(len(p)) > e.PayloadOffset+e.PayloadSize {
		return fmt.Errorf("tpk: tensor %q: payload longer than the %d bytes begun", e.Name, e.PayloadSize)
	}
	e.CRC32C = crc32.Update(e.CRC32C, castagnoli, p)
	return w.write(p)
}

// EndRecord finishes the record begun by BeginRecord, whose payload must
// have been written in full.
func (w *Writer) EndRecord() error {
	e := w.open
	if e == nil {
		return errors.New("tpk: EndRecord outside a record")
	}
	if got := w.off - e.PayloadOffset; got != e.PayloadSize {
		return fmt.Errorf("tpk: tensor %q: %d payload bytes written of %d begun", e.Name, got, e.PayloadSize)
	}
	w.open = nil
	var c [4]byte
	binary.LittleEndian.PutUint32(c[:], e.CRC32C)
	if err := w.write(c[:]); err != nil {
		return err
	}
	e.RecordSize = w.off - e.RecordOffset
	if e.Stats != nil {
		// JSON cannot hold NaN or Inf: an exact reconstruction has SQNR
		// +Inf, stored as 999 dB; an all-zero tensor reconstructed with
		// error has relative error +Inf, stored as 1e300.
		s := *e.Stats
		s.RelErr = finite(s.RelErr, 0, 1e300)
		s.SQNRdB = finite(s.SQNRdB, 999, 999)
		if math.IsInf(e.Stats.SQNRdB, -1) {
			s.SQNRdB = -999
		}
		e.Stats = &s
	}
	w.names[e.Name] = true
	w.idx.Tensors = append(w.idx.Tensors, *e)
	return nil
}

// Grow makes room for n more records, so that a writer told the count in
// advance holds the index in one allocation.
func (w *Writer) Grow(n int) {
	if n > 0 && n <= MaxTensors {
		w.idx.Tensors = slices.Grow(w.idx.Tensors, n)
		if len(w.names) == 0 {
			w.names = make(map[string]bool, n)
		}
	}
}

// Close writes the index and footer and flushes. It does not close the
// underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	if w.open != nil {
		return fmt.Errorf("tpk: Close inside the record of %q", w.open.Name)
	}
	w.closed = true
	idxOff := w.off
	n, crc, err := w.writeIndex()
	if err != nil {
		return err
	}
	var f [FooterSize]byte
	copy(f[:], footerMagic[:])
	binary.LittleEndian.PutUint16(f[8:], Version)
	binary.LittleEndian.PutUint32(f[12:], crc)
	binary.LittleEndian.PutUint64(f[16:], uint64(idxOff))
	binary.LittleEndian.PutUint64(f[24:], uint64(n))
	if err := w.write(f[:]); err != nil {
		return err
	}
	return w.bw.Flush()
}

// writeIndex writes the JSON index, the same bytes as json.Marshal(&w.idx),
// one entry at a time, so that an index of a million entries is never held
// as one buffer. It returns the index's length and CRC-32C.
func (w *Writer) writeIndex() (int64, uint32, error) {
	head := w.idx
	head.Tensors = []Entry{}
	js, err := json.Marshal(&head)
	if err != nil {
		return 0, 0, fmt.Errorf("tpk: encoding index: %w", err)
	}
	// js ends with "[]}", the empty tensors array and the closing brace.
	if !bytes.HasSuffix(js, []byte("[]}")) {
		return 0, 0, errors.New("tpk: encoding index: unexpected layout")
	}
	var n int64
	var crc uint32
	put := func(b []byte) error {
		if n += int64(len(b)); n > MaxIndexSize {
			return fmt.Errorf("tpk: index exceeds the %d-byte limit", MaxIndexSize)
		}
		crc = crc32.Update(crc, castagnoli, b)
		return w.write(b)
	}
	if err := put(js[:len(js)-2]); err != nil {
		return 0, 0, err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for i := range w.idx.Tensors {
		buf.Reset()
		if i > 0 {
			buf.WriteByte(',')
		}
		if err := enc.Encode(&w.idx.Tensors[i]); err != nil {
			return 0, 0, fmt.Errorf("tpk: encoding index: %w", err)
		}
		// Encode ends each value with a newline, which Marshal does not.
		if err := put(bytes.TrimSuffix(buf.Bytes(), []byte("\n"))); err != nil {
			return 0, 0, err
		}
	}
	if err := put([]byte("]}")); err != nil {
		return 0, 0, err
	}
	return n, crc, nil
}

// Last returns the entry of the most recently written record.
func (w *Writer) Last() Entry { return w.idx.Tensors[len(w.idx.Tensors)-1] }

func finite(v, nan, inf float64) float64 {
	switch {
	case math.IsNaN(v):
		return nan
	case math.IsInf(v, 0):
		return inf
	}
	return v
}
