package gguf

import (
	"bytes"
	"cmp"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"sync"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/internal/mmap"
	"github.com/tpconvert/tpconvert/tensor"
)

// Magic is the first four bytes of a GGUF file.
const Magic = "GGUF"

// Supported file format versions.
const (
	MinVersion = 2
	MaxVersion = 3
)

// headerSize is the size of magic, version, tensor_count and kv_count.
const headerSize = 4 + 4 + 8 + 8

// minTensorInfo is the smallest tensor info: name length, n_dims, one
// dimension, type and offset.
const minTensorInfo = 8 + 4 + 8 + 4 + 8

// Reader is an open GGUF file, memory-mapped read-only. It implements
// formats.Source. Its methods may be called from several goroutines.
type Reader struct {
	m         *mmap.Map // nil for a Reader made by parse alone (tests)
	data      []byte    // the whole file (m.Data)
	meta      *formats.Meta
	tensors   []tensor.Info // data order
	infoOrder []string
	infoEnd   int64 // end of the tensor infos
	dataStart int64

	kvOnce sync.Once
	kv     Metadata

	mu     sync.RWMutex // guards closed against Bytes/Release racing with Close
	closed bool
}

var _ formats.Source = (*Reader)(nil)

// Open maps the GGUF file at path and parses and checks its header, metadata
// and tensor infos (see the package documentation for the checks and
// limits). Tensor data is not read.
func Open(path string) (*Reader, error) {
	m, err := mmap.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gguf: %w", err)
	}
	r, err := parse(filepath.Base(path), m.Data)
	if err != nil {
		m.Close()
		return nil, err
	}
	r.m = m
	return r, nil
}

// parse parses a whole GGUF file held in b; name is used in errors and Meta.
func parse(name string, b []byte) (*Reader, error) {
	d := &decoder{b: b, file: name}
	fail := func(off int, err error) (*Reader, error) { return nil, d.errAt(off, err) }

	if len(b) < 4 || string(b[:4]) != Magic {
		return fail(0, ErrBadMagic)
	}
	d.off = 4
	version, err := d.u32("version")
	if err != nil {
		return nil, err
	}
	if version < MinVersion || version > MaxVersion {
		return fail(4, fmt.Errorf("%w %d (supported %d-%d)", ErrUnsupportedVersion, version, MinVersion, MaxVersion))
	}
	nTensors, err := d.u64("tensor_count")
	if err != nil {
		return nil, err
	}
	nKV, err := d.u64("kv_count")
	if err != nil {
		return nil, err
	}
	if nTensors > MaxCount {
		return fail(8, fmt.Errorf("%w: %d tensors (limit %d)", ErrLimit, nTensors, MaxCount))
	}
	if nTensors > uint64(d.remaining()/minTensorInfo) {
		return fail(8, fmt.Errorf("%w: %d tensor infos cannot fit in %d bytes", ErrTruncated, nTensors, d.remaining()))
	}

	kvStart := d.off
	align32, hasAlign, err := d.kvWalk(nKV, nil)
	if err != nil {
		return nil, err
	}
	kvEnd := d.off
	align := uint64(DefaultAlignment)
	if hasAlign {
		align = uint64(align32)
	}

	r := &Reader{
		data:      b,
		tensors:   make([]tensor.Info, 0, nTensors),
		infoOrder: make([]string, 0, nTensors),
	}
	names := make(map[string]struct{}, nTensors)
	rel := make([]uint64, 0, nTensors) // offsets relative to the data section
	for i := uint64(0); i < nTensors; i++ {
		t, off, err := d.tensorInfo(i, align)
		if err != nil {
			return nil, err
		}
		if _, dup := names[t.Name]; dup {
			return nil, &FormatError{File: name, Tensor: t.Name, Offset: d.base + int64(off), Err: fmt.Errorf("%w: duplicate tensor name", ErrFormat)}
		}
		names[t.Name] = struct{}{}
		r.tensors = append(r.tensors, t)
		r.infoOrder = append(r.infoOrder, t.Name)
		rel = append(rel, uint64(t.Offset))
	}
	r.infoEnd = int64(d.off)

	size := int64(len(b))
	dataStart, ok := alignUp(uint64(d.off), align)
	if !ok || dataStart > uint64(size) {
		return fail(d.off, fmt.Errorf("%w: data section starts at %d, past the end of the %d-byte file", ErrTruncated, dataStart, size))
	}
	r.dataStart = int64(dataStart)
	for i := range r.tensors {
		t := &r.tensors[i]
		if rel[i] > uint64(size)-dataStart || uint64(t.Size) > uint64(size)-dataStart-rel[i] {
			return nil, &FormatError{File: name, Tensor: t.Name, Offset: size,
				Err: fmt.Errorf("%w: data [%d, +%d) of the data section at %d ends past the end of the %d-byte file", ErrTruncated, rel[i], t.Size, dataStart, size)}
		}
		t.Offset = int64(dataStart + rel[i])
	}
	// Data order: by offset; at equal offsets empty tensors first (the
	// writer places an empty tensor at the offset the next tensor then
	// starts at), otherwise file order.
	slices.SortStableFunc(r.tensors, func(a, b tensor.Info) int {
		if c := cmp.Compare(a.Offset, b.Offset); c != 0 {
			return c
		}
		return cmp.Compare(min(a.Size, 1), min(b.Size, 1))
	})
	end := r.dataStart
	last := -1 // last tensor with data
	for i, t := range r.tensors {
		if t.Size == 0 {
			continue
		}
		if last >= 0 && t.Offset < end {
			p := r.tensors[last]
			return nil, &FormatError{File: name, Tensor: t.Name, Offset: t.Offset,
				Err: fmt.Errorf("%w: data overlaps tensor %q at [%d, %d)", ErrFormat, p.Name, p.Offset, p.Offset+p.Size)}
		}
		end, last = t.Offset+t.Size, i
	}
	for _, t := range r.tensors {
		end = max(end, t.Offset) // an empty tensor may lie past the last data
	}

	r.meta = &formats.Meta{
		Kind:  formats.GGUF,
		Files: []formats.FileMeta{{Name: name, Size: size}},
		GGUF: &formats.GGUFMeta{
			Version:   version,
			KVCount:   nKV,
			KV:        bytes.Clone(b[kvStart:kvEnd]),
			Alignment: align,
			TailPad:   size - end,
			InfoOrder: differentOrder(r.infoOrder, r.tensors),
		},
	}
	if r.meta.GGUF.KV == nil {
		r.meta.GGUF.KV = []byte{}
	}
	return r, nil
}

// tensorInfo reads tensor info number i. The returned Info's Offset is
// relative to the data section; off is where the info starts.
func (d *decoder) tensorInfo(i uint64, align uint64) (t tensor.Info, off int, err error) {
	off = d.off
	nb, err := d.str(MaxKeyLen, fmt.Sprintf("name of tensor %d", i))
	if err != nil {
		return t, off, err
	}
	t.Name = string(nb)
	d.tensor = t.Name
	defer func() { d.tensor = "" }()

	nd, err := d.u32("n_dims")
	if err != nil {
		return t, off, err
	}
	if nd < 1 || nd > MaxDims {
		return t, off, d.errAt(d.off-4, fmt.Errorf("%w: n_dims %d (supported 1-%d)", ErrFormat, nd, MaxDims))
	}
	t.Shape = make([]int64, nd)
	for j := int(nd) - 1; j >= 0; j-- { // ne[0] is innermost: Shape reverses it
		ne, err := d.u64("dimension")
		if err != nil {
			return t, off, err
		}
		if ne > uint64(tensor.MaxElems) {
			return t, off, d.errAt(d.off-8, fmt.Errorf("%w: dimension %d exceeds 2^48", ErrLimit, ne))
		}
		t.Shape[j] = int64(ne)
	}
	gt, err := d.u32("ggml type")
	if err != nil {
		return t, off, err
	}
	if t.DType, err = tensor.FromGGMLType(gt); err != nil {
		return t, off, d.errAt(d.off-4, fmt.Errorf("%w: %w", ErrFormat, err))
	}
	if t.Size, err = tensor.ByteSize(t.DType, t.Shape); err != nil {
		return t, off, d.errAt(off, fmt.Errorf("%w: %w", ErrFormat, err))
	}
	o, err := d.u64("offset")
	if err != nil {
		return t, off, err
	}
	if o%align != 0 {
		return t, off, d.errAt(d.off-8, fmt.Errorf("%w: offset %d is not a multiple of the alignment %d", ErrFormat, o, align))
	}
	if o > math.MaxInt64 {
		return t, off, d.errAt(d.off-8, fmt.Errorf("%w: offset %d", ErrLimit, o))
	}
	t.Offset = int64(o)
	return t, off, nil
}

// alignUp rounds x up to a multiple of the power of two a; ok is false on
// overflow.
func alignUp(x, a uint64) (uint64, bool) {
	y := (x + a - 1) &^ (a - 1)
	return y, y >= x
}

// Tensors returns the tensors in the order of their data offsets; at equal
// offsets, tensors without data come first, in the file order of their
// tensor infos. Offset is the absolute file
// offset, File is 0.
func (r *Reader) Tensors() []tensor.Info {
	out := make([]tensor.Info, len(r.tensors))
	for i, t := range r.tensors {
		out[i] = t.Clone()
	}
	return out
}

// differentOrder returns a copy of order when it differs from the order
// of infos, else nil.
func differentOrder(order []string, infos []tensor.Info) []string {
	if sameOrder(order, infos) {
		return nil
	}
	return slices.Clone(order)
}

func sameOrder(order []string, infos []tensor.Info) bool {
	if len(order) != len(infos) {
		return false
	}
	for i := range order {
		if order[i] != infos[i].Name {
			return false
		}
	}
	return true
}

// InfoOrder returns the tensor names in the order of the file's tensor
// infos, which a Writer needs to reproduce the file (Meta().GGUF.InfoOrder
// holds it only when it differs from data order).
func (r *Reader) InfoOrder() []string { return slices.Clone(r.infoOrder) }

// DataOffset returns the file offset of the data section.
func (r *Reader) DataOffset() int64 { return r.dataStart }

// Bytes returns tensor i's data (i indexes Tensors). The slice aliases the
// memory map: it is valid until Close and must not be written to.
func (r *Reader) Bytes(i int) ([]byte, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return nil, ErrClosed
	}
	if i < 0 || i >= len(r.tensors) {
		return nil, fmt.Errorf("gguf: %s: tensor index %d out of range [0, %d)", r.meta.Files[0].Name, i, len(r.tensors))
	}
	t := r.tensors[i]
	r.m.WillNeed(t.Offset, t.Size) // start readahead of the whole tensor (nil-safe)
	return r.data[t.Offset : t.Offset+t.Size : t.Offset+t.Size], nil
}

// Release drops tensor i's pages from resident memory; the data stays
// readable.
func (r *Reader) Release(i int) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed || r.m == nil || i < 0 || i >= len(r.tensors) {
		return
	}
	r.m.Release(r.tensors[i].Offset, r.tensors[i].Size)
}

// Meta returns the container metadata. The caller must not modify it.
func (r *Reader) Meta() *formats.Meta { return r.meta }

// KV returns the decoded metadata key/value pairs in file order.
func (r *Reader) KV() Metadata {
	r.kvOnce.Do(func() {
		// Open validated the section, so ParseKV cannot fail here.
		r.kv, _ = ParseKV(r.meta.GGUF.KV, r.meta.GGUF.KVCount)
	})
	return r.kv
}

// CheckReproducible reports whether writing this file back with NewWriter
// (given Meta().GGUF, InfoOrder and Tensors, all tensors unchanged) yields
// the same bytes. It returns nil if so, otherwise an error naming the first
// difference: a tensor not at the next aligned offset, or padding that is
// not zero. It reads the padding bytes, not the tensor data.
func (r *Reader) CheckReproducible() error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return ErrClosed
	}
	name := r.meta.Files[0].Name
	align := r.meta.GGUF.Alignment
	data := r.data
	if !allZero(data[r.infoEnd:r.dataStart]) {
		return &FormatError{File: name, Offset: r.infoEnd, Err: fmt.Errorf("%w: padding before the data section is not zero", ErrFormat)}
	}
	pos := uint64(0)
	for _, t := range r.tensors {
		want, _ := alignUp(pos, align)
		got := uint64(t.Offset - r.dataStart)
		if got != want {
			return &FormatError{File: name, Tensor: t.Name, Offset: t.Offset,
				Err: fmt.Errorf("%w: data at offset %d of the data section, a rewrite puts it at %d", ErrFormat, got, want)}
		}
		if !allZero(data[r.dataStart+int64(pos) : t.Offset]) {
			return &FormatError{File: name, Tensor: t.Name, Offset: r.dataStart + int64(pos), Err: fmt.Errorf("%w: padding before the tensor is not zero", ErrFormat)}
		}
		pos = got + uint64(t.Size)
	}
	if tail := r.dataStart + int64(pos); !allZero(data[tail:]) {
		return &FormatError{File: name, Offset: tail, Err: fmt.Errorf("%w: %d bytes after the last tensor are not all zero", ErrFormat, int64(len(data))-tail)}
	}
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Close unmaps the file. Slices returned by Bytes must not be used after.
func (r *Reader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	r.data = nil
	if r.m == nil {
		return nil
	}
	return r.m.Close()
}

// ReleaseRange drops the pages of bytes [off, off+n) of tensor i from
// resident memory (formats.RangeReleaser).
func (r *Reader) ReleaseRange(i int, off, n int64) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed || r.m == nil || i < 0 || i >= len(r.tensors) || off < 0 || off >= r.tensors[i].Size {
		return
	}
	r.m.Release(r.tensors[i].Offset+off, min(n, r.tensors[i].Size-off))
}
