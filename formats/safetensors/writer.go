package safetensors

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"unicode/utf8"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/tensor"
)

// plan is the layout of one output file, computed from the tensors' names,
// dtypes and shapes alone.
type plan struct {
	prefix   []byte // 8-byte header length, header, padding
	tensors  []tensor.Info
	verbatim bool
	size     int64 // total file size
}

// planFile lays out a file holding tensors in the given (data) order.
//
// Header key order: with fm.Header, the order of the original header, with
// fm.Metadata where "__metadata__" was (first when it was absent) and
// tensors the original lacks at the end in data order; without,
// "__metadata__" first and then the tensors in data order, which is the
// reference implementation's layout. When every tensor's dtype, shape and
// data offsets, and the metadata, equal those of fm.Header, the header is
// fm.Header verbatim followed by fm.HeaderPad spaces; otherwise it is padded
// with spaces to a multiple of 8 bytes, as the reference implementation does.
func planFile(tensors []tensor.Info, fm *formats.FileMeta) (*plan, error) {
	p := &plan{tensors: make([]tensor.Info, len(tensors))}
	byName := make(map[string]int, len(tensors))
	var off int64
	for i, t := range tensors {
		if !utf8.ValidString(t.Name) {
			return nil, fmt.Errorf("safetensors: tensor %q: name is not valid UTF-8", t.Name)
		}
		if t.Name == metadataKey {
			return nil, fmt.Errorf("safetensors: a tensor cannot be named %s", metadataKey)
		}
		if _, dup := byName[t.Name]; dup {
			return nil, fmt.Errorf("safetensors: tensor %q: duplicate name", t.Name)
		}
		byName[t.Name] = i
		if _, ok := DTypeName(t.DType); !ok {
			return nil, fmt.Errorf("safetensors: tensor %q: dtype %s cannot be stored in safetensors", t.Name, t.DType)
		}
		size, err := tensor.ByteSize(t.DType, t.Shape)
		if err != nil {
			return nil, fmt.Errorf("safetensors: tensor %q: %w", t.Name, err)
		}
		if off > 1<<62-size {
			return nil, fmt.Errorf("safetensors: tensor %q: data section too large", t.Name)
		}
		p.tensors[i] = tensor.Info{Name: t.Name, DType: t.DType, Shape: slices.Clone(t.Shape), Offset: off, Size: size}
		off += size
	}
	var metadata []byte
	var orig *header
	if fm != nil {
		label := fm.Name
		if label == "" {
			label = "output file"
		}
		metadata = fm.Metadata
		if metadata != nil {
			if err := checkMetadata(metadata); err != nil {
				return nil, fmt.Errorf("safetensors: %s: %w", label, err)
			}
		}
		if len(fm.Header) > 0 {
			h, err := parseHeader(fm.Header)
			if err != nil {
				return nil, fmt.Errorf("safetensors: original header of %s: %w", label, err)
			}
			orig = h
		}
	}

	var hdr []byte
	if orig != nil && fm.HeaderPad >= 0 && len(fm.Header)+fm.HeaderPad <= MaxHeaderSize &&
		bytes.Equal(orig.metadata, metadata) && sameLayout(orig, p.tensors, byName) {
		hdr = make([]byte, 8, 8+len(fm.Header)+fm.HeaderPad)
		hdr = append(hdr, fm.Header...)
		hdr = append(hdr, bytes.Repeat([]byte{' '}, fm.HeaderPad)...)
		p.verbatim = true
	} else {
		hdr = append(make([]byte, 8, 64+64*len(tensors)), '{')
		first := true
		sep := func() {
			if !first {
				hdr = append(hdr, ',')
			}
			first = false
		}
		emitMeta := func() {
			if metadata != nil {
				sep()
				hdr = appendString(hdr, metadataKey)
				hdr = append(hdr, ':')
				hdr = append(hdr, metadata...)
			}
		}
		emitTensor := func(t *tensor.Info) {
			sep()
			name, _ := DTypeName(t.DType)
			hdr = appendEntry(hdr, t.Name, name, t.Shape, t.Offset, t.Offset+t.Size)
		}
		written := make([]bool, len(p.tensors))
		if orig == nil {
			emitMeta()
		} else {
			// Where "__metadata__" was; first when the original had none.
			metaAt := max(orig.metaPos, 0)
			for j, e := range orig.tensors {
				if j == metaAt {
					emitMeta()
				}
				if i, ok := byName[e.name]; ok {
					emitTensor(&p.tensors[i])
					written[i] = true
				}
			}
			if metaAt == len(orig.tensors) {
				emitMeta()
			}
		}
		for i := range p.tensors {
			if !written[i] {
				emitTensor(&p.tensors[i])
			}
		}
		hdr = append(hdr, '}')
		for (len(hdr)-8)%8 != 0 {
			hdr = append(hdr, ' ')
		}
	}
	n := len(hdr) - 8
	if n > MaxHeaderSize {
		return nil, fmt.Errorf("safetensors: header of %d bytes exceeds the %d-byte limit", n, MaxHeaderSize)
	}
	binary.LittleEndian.PutUint64(hdr, uint64(n))
	p.prefix = hdr
	for i := range p.tensors {
		p.tensors[i].Offset += int64(len(hdr))
	}
	p.size = int64(len(hdr)) + off
	return p, nil
}

// sameLayout reports whether the original header lists exactly the planned
// tensors with the same dtypes, shapes and data offsets.
func sameLayout(orig *header, tensors []tensor.Info, byName map[string]int) bool {
	if len(orig.tensors) != len(tensors) {
		return false
	}
	for _, e := range orig.tensors {
		i, ok := byName[e.name]
		if !ok {
			return false
		}
		t := &tensors[i]
		if e.dtype != t.DType || !slices.Equal(e.shape, t.Shape) ||
			e.begin != uint64(t.Offset) || e.end != uint64(t.Offset+t.Size) {
			return false
		}
	}
	return true
}

// Writer streams one safetensors file: the header, computed up front from
// the tensors' names, dtypes and shapes, then each tensor's bytes as
// WriteTensor is called. It holds no tensor data. It implements
// formats.Sink.
//
// The upstream library's SerializeToWriter cannot do this: it takes every
// tensor at once (a map of views, all in memory) and orders them itself.
type Writer struct {
	w       io.Writer
	p       *plan
	next    int
	started bool
	closed  bool
	err     error
	partOff int64 // bytes of tensor next written by WriteTensorPart
}

var _ formats.PartSink = (*Writer)(nil)

// NewWriter returns a Writer of tensors, in that (data) order, to w. The
// tensors' Offset, Size and File are ignored: offsets follow from the order
// and sizes from dtype and shape.
//
// fm, which may be nil, carries the file's original header and
// "__metadata__" (as Reader.Meta returns them). When the tensors' dtypes,
// shapes and offsets and fm.Metadata all equal fm.Header's, the header is
// written verbatim with fm.HeaderPad spaces, so that an unchanged file is
// reproduced byte for byte. Otherwise the header keeps fm.Header's key order
// (fm.Metadata where "__metadata__" was, tensors the original lacks at the
// end) and is padded with spaces to a multiple of 8 bytes. Without fm.Header
// the header lists "__metadata__" (when fm.Metadata is set) and then the
// tensors in data order, the reference implementation's layout.
func NewWriter(w io.Writer, tensors []tensor.Info, fm *formats.FileMeta) (*Writer, error) {
	p, err := planFile(tensors, fm)
	if err != nil {
		return nil, err
	}
	return &Writer{w: w, p: p}, nil
}

// Size returns the size of the file the Writer produces.
func (w *Writer) Size() int64 { return w.p.size }

// Verbatim reports whether the original header is reproduced verbatim.
func (w *Writer) Verbatim() bool { return w.p.verbatim }

// Tensors returns the tensors with their offsets and sizes in the output.
func (w *Writer) Tensors() []tensor.Info { return slices.Clone(w.p.tensors) }

func (w *Writer) start() error {
	if w.started {
		return nil
	}
	w.started = true
	if _, err := w.w.Write(w.p.prefix); err != nil {
		return fmt.Errorf("safetensors: writing header: %w", err)
	}
	return nil
}

// WriteTensor writes the next tensor's bytes. t must be the next tensor
// (same name, dtype and shape) of those given to NewWriter, and data must
// hold exactly its bytes. After an error every call fails.
func (w *Writer) WriteTensor(t tensor.Info, data []byte) error {
	if w.err != nil {
		return w.err
	}
	w.err = w.writeTensor(t, data)
	return w.err
}

func (w *Writer) writeTensor(t tensor.Info, data []byte) error {
	if w.closed {
		return errors.New("safetensors: WriteTensor after Close")
	}
	if w.next >= len(w.p.tensors) {
		return fmt.Errorf("safetensors: tensor %q: all %d tensors already written", t.Name, len(w.p.tensors))
	}
	want := &w.p.tensors[w.next]
	if t.Name != want.Name {
		return fmt.Errorf("safetensors: tensor %q written where %q (tensor %d) is due", t.Name, want.Name, w.next)
	}
	if t.DType != want.DType || !slices.Equal(t.Shape, want.Shape) {
		return fmt.Errorf("safetensors: tensor %q: %s%v written, header says %s%v", t.Name, t.DType, t.Shape, want.DType, want.Shape)
	}
	if int64(len(data)) != want.Size {
		return fmt.Errorf("safetensors: tensor %q: %d bytes written, %s%v needs %d", t.Name, len(data), t.DType, t.Shape, want.Size)
	}
	if err := w.start(); err != nil {
		return err
	}
	if _, err := w.w.Write(data); err != nil {
		return fmt.Errorf("safetensors: tensor %q: %w", t.Name, err)
	}
	w.next++
	return nil
}

// Close checks that every tensor was written (writing the header of a file
// without tensors). It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return nil
	}
	if w.next < len(w.p.tensors) {
		w.err = fmt.Errorf("safetensors: closed after %d of %d tensors (next %q)", w.next, len(w.p.tensors), w.p.tensors[w.next].Name)
		return w.err
	}
	if err := w.start(); err != nil {
		w.err = err
		return err
	}
	w.closed = true
	return nil
}

// WriteFile writes a safetensors file at path holding tensors in the given
// order with data[i] the bytes of tensors[i], and metadata (when not nil) as
// "__metadata__" with sorted keys. It replaces an existing file atomically.
func WriteFile(path string, tensors []tensor.Info, data [][]byte, metadata map[string]string) error {
	if len(data) != len(tensors) {
		return fmt.Errorf("safetensors: %d tensors but %d data slices", len(tensors), len(data))
	}
	var fm *formats.FileMeta
	if metadata != nil {
		for k, v := range metadata {
			if !utf8.ValidString(k) || !utf8.ValidString(v) {
				return fmt.Errorf("safetensors: metadata %q: not valid UTF-8", k)
			}
		}
		fm = &formats.FileMeta{Metadata: encodeMetadata(metadata)}
	}
	f, err := atomicfile.Create(path, true)
	if err != nil {
		return err
	}
	defer f.Abort()
	bw := bufio.NewWriterSize(f, 1<<20)
	w, err := NewWriter(bw, tensors, fm)
	if err != nil {
		return err
	}
	for i, t := range tensors {
		if err := w.WriteTensor(t, data[i]); err != nil {
			return err
		}
	}
	return f.Finish(w.Close, bw.Flush)
}

// WriteTensorPart writes bytes [off, off+len(data)) of the next tensor
// (formats.PartSink). After an error every call fails.
func (w *Writer) WriteTensorPart(t tensor.Info, off int64, data []byte) error {
	if w.err != nil {
		return w.err
	}
	if off == 0 && int64(len(data)) == w.partSize(t) {
		return w.WriteTensor(t, data)
	}
	w.err = w.writePart(t, off, data)
	return w.err
}

// partSize is the size of t if it is the tensor due, else -1.
func (w *Writer) partSize(t tensor.Info) int64 {
	if w.next < len(w.p.tensors) && w.p.tensors[w.next].Name == t.Name {
		return w.p.tensors[w.next].Size
	}
	return -1
}

func (w *Writer) writePart(t tensor.Info, off int64, data []byte) error {
	if w.closed {
		return errors.New("safetensors: WriteTensor after Close")
	}
	if w.next >= len(w.p.tensors) {
		return fmt.Errorf("safetensors: tensor %q: all %d tensors already written", t.Name, len(w.p.tensors))
	}
	want := &w.p.tensors[w.next]
	if t.Name != want.Name || t.DType != want.DType || !slices.Equal(t.Shape, want.Shape) {
		return fmt.Errorf("safetensors: tensor %q %s%v written where %q %s%v (tensor %d) is due", t.Name, t.DType, t.Shape, want.Name, want.DType, want.Shape, w.next)
	}
	if off != w.partOff || off+int64(len(data)) > want.Size {
		return fmt.Errorf("safetensors: tensor %q: bytes [%d, %d) written after %d of %d", t.Name, off, off+int64(len(data)), w.partOff, want.Size)
	}
	if err := w.start(); err != nil {
		return err
	}
	if _, err := w.w.Write(data); err != nil {
		return fmt.Errorf("safetensors: tensor %q: %w", t.Name, err)
	}
	w.partOff += int64(len(data))
	if w.partOff == want.Size {
		w.next++
		w.partOff = 0
	}
	return nil
}
