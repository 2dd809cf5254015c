package gguf

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"slices"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/tensor"
)

// Writer writes a GGUF file as a stream. It implements formats.Sink.
//
// NewWriter writes the header, the key/value section and the tensor infos at
// once; WriteTensor then appends each tensor's data (after zero padding up
// to its aligned offset) and Close appends meta.TailPad zero bytes. The
// Writer holds no tensor data between calls.
//
// The key/value section is copied verbatim. When a tensor's dtype differs
// from the source's (F16 in place of Q4_1, say), its size and the following
// offsets change accordingly, but metadata that describes the dtypes, such
// as general.file_type, is left as it was.
type Writer struct {
	w       io.Writer
	tensors []tensor.Info // data order; Offset relative to the data section
	next    int           // index of the next tensor to write
	pos     int64         // bytes written
	start   int64         // file offset of the data section
	tail    int64
	size    int64 // total file size
	err     error // first write error, returned by every later call
	closed  bool
	partOff int64 // bytes of tensor next written by WriteTensorPart
}

var _ formats.PartSink = (*Writer)(nil)

// NewWriter starts a GGUF file on w.
//
// meta supplies the version (2 or 3), the key/value section (KV, KVCount)
// and the alignment, which must match the section's general.alignment (or
// be 32 when that key is absent), and TailPad. tensors lists the tensors in
// data order, the order WriteTensor must be called in; only their Name,
// DType and Shape are used. infoOrder lists the same names in the order the
// tensor infos are to be written; nil means data order.
func NewWriter(w io.Writer, meta *formats.GGUFMeta, infoOrder []string, tensors []tensor.Info) (*Writer, error) {
	if err := CheckMeta(meta); err != nil {
		return nil, fmt.Errorf("gguf: NewWriter: %w", err)
	}
	align := meta.Alignment
	var err error
	if len(tensors) > MaxCount {
		return nil, fmt.Errorf("gguf: NewWriter: %w: %d tensors (limit %d)", ErrLimit, len(tensors), MaxCount)
	}

	wr := &Writer{w: w, tensors: make([]tensor.Info, len(tensors)), tail: meta.TailPad}
	index := make(map[string]int, len(tensors))
	var rel uint64
	for i, t := range tensors {
		t = t.Clone()
		if len(t.Name) > MaxKeyLen {
			return nil, fmt.Errorf("gguf: NewWriter: tensor %.40q...: %w: name of %d bytes (limit %d)", t.Name, ErrLimit, len(t.Name), MaxKeyLen)
		}
		if _, dup := index[t.Name]; dup {
			return nil, fmt.Errorf("gguf: NewWriter: tensor %q: %w: duplicate name", t.Name, ErrFormat)
		}
		index[t.Name] = i
		if _, ok := t.DType.GGMLType(); !ok {
			return nil, fmt.Errorf("gguf: NewWriter: tensor %q: %w: dtype %s has no ggml type", t.Name, ErrFormat, t.DType)
		}
		if len(t.Shape) < 1 || len(t.Shape) > MaxDims {
			return nil, fmt.Errorf("gguf: NewWriter: tensor %q: %w: %d dimensions (supported 1-%d)", t.Name, ErrFormat, len(t.Shape), MaxDims)
		}
		if t.Size, err = tensor.ByteSize(t.DType, t.Shape); err != nil {
			return nil, fmt.Errorf("gguf: NewWriter: tensor %q: %w", t.Name, err)
		}
		var ok bool
		if rel, ok = alignUp(rel, align); !ok || rel > math.MaxInt64-uint64(t.Size) {
			return nil, fmt.Errorf("gguf: NewWriter: tensor %q: %w: data section exceeds 2^63 bytes", t.Name, ErrLimit)
		}
		t.Offset = int64(rel)
		rel += uint64(t.Size)
		t.File = 0
		wr.tensors[i] = t
	}

	order := wr.tensors
	if infoOrder != nil {
		if len(infoOrder) != len(tensors) {
			return nil, fmt.Errorf("gguf: NewWriter: %w: info order lists %d tensors, data order %d", ErrFormat, len(infoOrder), len(tensors))
		}
		order = make([]tensor.Info, len(infoOrder))
		used := make([]bool, len(tensors))
		for k, name := range infoOrder {
			i, ok := index[name]
			if !ok || used[i] {
				return nil, fmt.Errorf("gguf: NewWriter: tensor %q: %w: info order names it twice or names an unknown tensor", name, ErrFormat)
			}
			used[i] = true
			order[k] = wr.tensors[i]
		}
	}

	// Header and tensor infos; the key/value section is written from
	// meta.KV directly.
	head := make([]byte, 0, headerSize)
	head = append(head, Magic...)
	head = binary.LittleEndian.AppendUint32(head, meta.Version)
	head = binary.LittleEndian.AppendUint64(head, uint64(len(tensors)))
	head = binary.LittleEndian.AppendUint64(head, meta.KVCount)
	var infos []byte
	for _, t := range order {
		infos = appendString(infos, t.Name)
		infos = binary.LittleEndian.AppendUint32(infos, uint32(len(t.Shape)))
		for j := len(t.Shape) - 1; j >= 0; j-- {
			infos = binary.LittleEndian.AppendUint64(infos, uint64(t.Shape[j]))
		}
		gt, _ := t.DType.GGMLType()
		infos = binary.LittleEndian.AppendUint32(infos, gt)
		infos = binary.LittleEndian.AppendUint64(infos, uint64(t.Offset))
	}
	infoEnd := uint64(len(head)) + uint64(len(meta.KV)) + uint64(len(infos))
	start, ok := alignUp(infoEnd, align)
	if !ok || start > math.MaxInt64-rel || uint64(meta.TailPad) > math.MaxInt64-start-rel {
		return nil, fmt.Errorf("gguf: NewWriter: %w: file exceeds 2^63 bytes", ErrLimit)
	}
	wr.start = int64(start)
	wr.size = int64(start+rel) + meta.TailPad

	wr.write(head)
	wr.write(meta.KV)
	wr.write(infos)
	wr.zeros(wr.start - wr.pos)
	if wr.err != nil {
		return nil, wr.err
	}
	return wr, nil
}

// CheckMeta validates what NewWriter needs of meta: a supported version, a
// well-formed key/value section, an alignment that agrees with its
// general.alignment (32 when absent) and is at most formats.MaxAlignment,
// and a tail padding of at most formats.MaxTailPad bytes. A .tpk reader calls it so
// that a file restore would refuse is refused when it is opened.
func CheckMeta(meta *formats.GGUFMeta) error {
	if meta == nil {
		return fmt.Errorf("%w: no GGUF metadata", ErrFormat)
	}
	if meta.Version < MinVersion || meta.Version > MaxVersion {
		return fmt.Errorf("%w %d (supported %d-%d)", ErrUnsupportedVersion, meta.Version, MinVersion, MaxVersion)
	}
	d := decoder{b: meta.KV}
	a32, hasAlign, err := d.kvWalk(meta.KVCount, nil)
	if err != nil {
		return err // a *FormatError locating the problem in meta.KV
	}
	if d.off != len(meta.KV) {
		return d.errAt(d.off, fmt.Errorf("%w: %d bytes after the last of %d keys", ErrFormat, len(meta.KV)-d.off, meta.KVCount))
	}
	align := uint64(DefaultAlignment)
	if hasAlign {
		align = uint64(a32)
	}
	if meta.Alignment != align {
		return fmt.Errorf("%w: alignment %d, but the metadata gives %d", ErrFormat, meta.Alignment, align)
	}
	if align > formats.MaxAlignment {
		return fmt.Errorf("%w: alignment %d (limit %d)", ErrLimit, align, formats.MaxAlignment)
	}
	if meta.TailPad < 0 {
		return fmt.Errorf("%w: negative tail padding %d", ErrFormat, meta.TailPad)
	}
	if meta.TailPad > formats.MaxTailPad {
		return fmt.Errorf("%w: tail padding of %d bytes (limit %d)", ErrLimit, meta.TailPad, formats.MaxTailPad)
	}
	return nil
}

// Size returns the size of the complete file in bytes.
func (w *Writer) Size() int64 { return w.size }

func (w *Writer) write(p []byte) {
	if w.err != nil {
		return
	}
	n, err := w.w.Write(p)
	w.pos += int64(n)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.err = fmt.Errorf("gguf: write: %w", err)
	}
}

var zeroBlock [4096]byte

func (w *Writer) zeros(n int64) {
	for n > 0 && w.err == nil {
		k := min(n, int64(len(zeroBlock)))
		w.write(zeroBlock[:k])
		n -= k
	}
}

// nextTensor returns the tensor the writer expects next, or the error
// that writing t now is.
func (w *Writer) nextTensor(t tensor.Info) (tensor.Info, error) {
	if w.err != nil {
		return tensor.Info{}, w.err
	}
	if w.closed {
		return tensor.Info{}, ErrClosed
	}
	if w.next >= len(w.tensors) {
		return tensor.Info{}, fmt.Errorf("%w: tensor %q after all %d tensors", ErrWriteOrder, t.Name, len(w.tensors))
	}
	return w.tensors[w.next], nil
}

// WriteTensor appends the next tensor's data. t must be the next tensor
// announced to NewWriter (same name, dtype and shape) and data must hold
// exactly its bytes.
func (w *Writer) WriteTensor(t tensor.Info, data []byte) error {
	want, err := w.nextTensor(t)
	if err != nil {
		return err
	}
	if t.Name != want.Name {
		return fmt.Errorf("%w: got tensor %q, want %q (number %d of %d)", ErrWriteOrder, t.Name, want.Name, w.next+1, len(w.tensors))
	}
	if t.DType != want.DType || !slices.Equal(t.Shape, want.Shape) {
		return fmt.Errorf("%w: tensor %q is %s %v, announced as %s %v", ErrWriteOrder, t.Name, t.DType, t.Shape, want.DType, want.Shape)
	}
	if int64(len(data)) != want.Size {
		return fmt.Errorf("%w: tensor %q: %d bytes, want %d", ErrWriteSize, t.Name, len(data), want.Size)
	}
	w.zeros(w.start + want.Offset - w.pos)
	w.write(data)
	w.next++
	return w.err
}

// WriteTensorPart writes bytes [off, off+len(data)) of the next tensor
// (formats.PartSink).
func (w *Writer) WriteTensorPart(t tensor.Info, off int64, data []byte) error {
	want, err := w.nextTensor(t)
	if err != nil {
		return err
	}
	if off == 0 && int64(len(data)) == want.Size {
		return w.WriteTensor(t, data)
	}
	if t.Name != want.Name || t.DType != want.DType || !slices.Equal(t.Shape, want.Shape) {
		return fmt.Errorf("%w: got tensor %q %s %v, want %q %s %v (number %d of %d)", ErrWriteOrder, t.Name, t.DType, t.Shape, want.Name, want.DType, want.Shape, w.next+1, len(w.tensors))
	}
	if off != w.partOff || off+int64(len(data)) > want.Size {
		return fmt.Errorf("%w: tensor %q: bytes [%d, %d) after %d of %d", ErrWriteSize, t.Name, off, off+int64(len(data)), w.partOff, want.Size)
	}
	if off == 0 {
		w.zeros(w.start + want.Offset - w.pos)
	}
	w.write(data)
	if w.partOff += int64(len(data)); w.partOff == want.Size {
		w.next++
		w.partOff = 0
	}
	return w.err
}

// Close writes the trailing padding. It does not close the underlying
// writer. It fails if not every tensor has been written.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return nil
	}
	if w.next < len(w.tensors) {
		return fmt.Errorf("%w: %d of %d written, next %q", ErrIncomplete, w.next, len(w.tensors), w.tensors[w.next].Name)
	}
	w.zeros(w.tail)
	w.closed = true
	return w.err
}
