package tpk

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/formats/gguf"
	"github.com/tpconvert/tpconvert/internal/mmap"
	"github.com/tpconvert/tpconvert/tensor"
)

// Reader gives random access to the records of a .tpk file.
type Reader struct {
	name   string
	r      io.ReaderAt
	size   int64
	data   []byte // whole file when memory-mapped
	m      *mmap.Map
	idx    Index
	byName map[string]int
	idxOff int64
}

// Open memory-maps the .tpk file at path and reads its index.
func Open(path string) (*Reader, error) {
	m, err := mmap.Open(path)
	if err != nil {
		return nil, err
	}
	r, err := newReader(filepath.Base(path), bytes.NewReader(m.Data), m.Size(), m.Data)
	if err != nil {
		m.Close()
		return nil, err
	}
	r.m = m
	return r, nil
}

// NewReader reads the index of a .tpk file of the given size through ra.
// name is used in error messages.
func NewReader(ra io.ReaderAt, size int64, name string) (*Reader, error) {
	return newReader(name, ra, size, nil)
}

func newReader(name string, ra io.ReaderAt, size int64, data []byte) (*Reader, error) {
	r := &Reader{name: name, r: ra, size: size, data: data}
	fail := func(off int64, err error) (*Reader, error) {
		return nil, &Error{File: name, Offset: off, Err: err}
	}
	if size < HeaderSize+FooterSize {
		return fail(0, fmt.Errorf("%w: file of %d bytes is too short", ErrFormat, size))
	}
	var h [HeaderSize]byte
	if _, err := ra.ReadAt(h[:], 0); err != nil {
		return fail(0, err)
	}
	if !bytes.Equal(h[:8], magic[:]) {
		return fail(0, fmt.Errorf("%w: bad magic", ErrFormat))
	}
	if v := binary.LittleEndian.Uint16(h[8:]); v < MinVersion || v > MaxVersion {
		return fail(8, fmt.Errorf("%w %d (supported %d-%d)", ErrVersion, v, MinVersion, MaxVersion))
	}
	if binary.LittleEndian.Uint16(h[10:]) != 0 {
		return fail(10, fmt.Errorf("%w: unknown header flags", ErrCorrupt))
	}
	if binary.LittleEndian.Uint32(h[12:]) != 0 {
		return fail(12, fmt.Errorf("%w: reserved header bytes are not zero", ErrCorrupt))
	}
	var f [FooterSize]byte
	footOff := size - FooterSize
	if _, err := ra.ReadAt(f[:], footOff); err != nil {
		return fail(footOff, err)
	}
	if !bytes.Equal(f[:8], footerMagic[:]) {
		return fail(footOff, fmt.Errorf("%w: bad footer magic (file truncated?)", ErrCorrupt))
	}
	if v := binary.LittleEndian.Uint16(f[8:]); v < MinVersion || v > MaxVersion {
		return fail(footOff+8, fmt.Errorf("%w %d (supported %d-%d)", ErrVersion, v, MinVersion, MaxVersion))
	}
	if binary.LittleEndian.Uint16(f[10:]) != 0 {
		return fail(footOff+10, fmt.Errorf("%w: unknown footer flags", ErrCorrupt))
	}
	idxCRC := binary.LittleEndian.Uint32(f[12:])
	idxOff := int64(binary.LittleEndian.Uint64(f[16:]))
	idxLen := int64(binary.LittleEndian.Uint64(f[24:]))
	if idxOff < HeaderSize || idxLen < 2 || idxLen > MaxIndexSize || idxOff > footOff || idxLen != footOff-idxOff {
		return fail(footOff+16, fmt.Errorf("%w: index at %d of %d bytes lies outside the file", ErrCorrupt, idxOff, idxLen))
	}
	js := make([]byte, idxLen)
	if _, err := ra.ReadAt(js, idxOff); err != nil {
		return fail(idxOff, err)
	}
	if crc32.Checksum(js, castagnoli) != idxCRC {
		return fail(idxOff, fmt.Errorf("%w in the index", ErrChecksum))
	}
	end, err := decodeIndex(js, &r.idx)
	if err != nil {
		return fail(idxOff, fmt.Errorf("%w: index: %v", ErrCorrupt, err))
	}
	if rest := bytes.TrimLeft(js[end:], " \t\r\n"); len(rest) > 0 {
		return fail(idxOff+end, fmt.Errorf("%w: %d bytes after the index's JSON value", ErrCorrupt, len(rest)))
	}
	r.idxOff = idxOff
	if err := r.validate(); err != nil {
		return nil, err
	}
	return r, nil
}

// decodeIndex decodes the JSON index js into ix, as a json.Decoder that
// disallows unknown fields would, and returns the offset just past the
// JSON value. The tensors array is decoded one entry at a time, so that
// the decoder never holds a second copy of a large index.
func decodeIndex(js []byte, ix *Index) (int64, error) {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if tok, err := dec.Token(); err != nil {
		return 0, err
	} else if tok != json.Delim('{') {
		return 0, fmt.Errorf("the index is %v, not a JSON object", tok)
	}
	// The members other than tensors are small: they are gathered and
	// decoded together, with the standard rules for field names.
	head := []byte{'{'}
	seen := false
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return 0, err
		}
		key, _ := tok.(string)
		if strings.EqualFold(key, "tensors") {
			if seen {
				return 0, errors.New("tensors listed twice")
			}
			seen = true
			if err := decodeEntries(dec, &ix.Tensors); err != nil {
				return 0, err
			}
			continue
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return 0, err
		}
		k, err := json.Marshal(key)
		if err != nil {
			return 0, err
		}
		if len(head) > 1 {
			head = append(head, ',')
		}
		head = append(append(append(head, k...), ':'), v...)
	}
	if _, err := dec.Token(); err != nil {
		return 0, err
	}
	hd := json.NewDecoder(bytes.NewReader(append(head, '}')))
	hd.DisallowUnknownFields()
	if err := hd.Decode(ix); err != nil {
		return 0, err
	}
	return dec.InputOffset(), nil
}

// decodeEntries decodes the tensors array (or null) from dec into dst.
func decodeEntries(dec *json.Decoder, dst *[]Entry) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if tok == nil {
		*dst = nil
		return nil
	}
	if tok != json.Delim('[') {
		return fmt.Errorf("tensors is %v, not an array", tok)
	}
	// Blocks of entries, copied into one slice of the exact length at the
	// end, rather than a slice grown by doubling (up to three times the
	// entries' size at once).
	var blocks [][]Entry
	n := 0
	for dec.More() {
		if n >= MaxTensors {
			return fmt.Errorf("more than %d tensors", MaxTensors)
		}
		if len(blocks) == 0 || len(blocks[len(blocks)-1]) == cap(blocks[len(blocks)-1]) {
			blocks = append(blocks, make([]Entry, 0, 4096))
		}
		b := &blocks[len(blocks)-1]
		*b = append(*b, Entry{})
		if err := dec.Decode(&(*b)[len(*b)-1]); err != nil {
			return err
		}
		n++
	}
	if _, err := dec.Token(); err != nil {
		return err
	}
	*dst = make([]Entry, 0, n)
	for i, b := range blocks {
		*dst = append(*dst, b...)
		blocks[i] = nil
	}
	return nil
}

func (r *Reader) validate() error {
	ix := &r.idx
	bad := func(t string, off int64, format string, a ...any) error {
		return &Error{File: r.name, Tensor: t, Offset: off, Err: fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, a...)...)}
	}
	if ix.Version < MinVersion || ix.Version > MaxVersion {
		return &Error{File: r.name, Offset: r.idxOff, Err: fmt.Errorf("%w %d in the index (supported %d-%d)", ErrVersion, ix.Version, MinVersion, MaxVersion)}
	}
	if ix.Source == nil || (ix.Source.Kind != formats.Safetensors && ix.Source.Kind != formats.GGUF) {
		return bad("", r.idxOff, "index names no known source container")
	}
	// The source metadata says how much restore writes besides the
	// tensors (padding, gaps) and under which names: it is checked
	// against the limits restore enforces, so that inspect and verify
	// refuse what restore would.
	if err := ix.Source.Check(); err != nil {
		return &Error{File: r.name, Offset: r.idxOff, Err: fmt.Errorf("%w: %w", ErrCorrupt, err)}
	}
	if ix.Source.Kind == formats.GGUF {
		if err := gguf.CheckMeta(ix.Source.GGUF); err != nil {
			return &Error{File: r.name, Offset: r.idxOff, Err: fmt.Errorf("%w: GGUF metadata: %w", ErrCorrupt, err)}
		}
	}
	if len(ix.Tensors) > MaxTensors {
		return bad("", r.idxOff, "%d tensors (at most %d)", len(ix.Tensors), MaxTensors)
	}
	nfiles := len(ix.Source.Files)
	if nfiles == 0 {
		return bad("", r.idxOff, "index lists no source file")
	}
	r.byName = make(map[string]int, len(ix.Tensors))
	next := int64(HeaderSize)
	for i := range ix.Tensors {
		e := &ix.Tensors[i]
		if e.Name == "" || len(e.Name) > MaxNameLen || !utf8.ValidString(e.Name) {
			return bad("", r.idxOff, "tensor %d has a name of %d bytes that is empty, too long or not UTF-8", i, len(e.Name))
		}
		if _, dup := r.byName[e.Name]; dup {
			return bad(e.Name, r.idxOff, "tensor listed twice")
		}
		r.byName[e.Name] = i
		if !e.DType.Known() {
			return bad(e.Name, r.idxOff, "unknown dtype code %d", uint16(e.DType))
		}
		if len(e.Shape) > MaxDims || len(e.Params) > MaxParamsLen {
			return bad(e.Name, r.idxOff, "shape or parameters exceed the limits")
		}
		sz, err := tensor.ByteSize(e.DType, e.Shape)
		if err != nil {
			return bad(e.Name, r.idxOff, "%v", err)
		}
		if sz != e.SourceSize {
			return bad(e.Name, r.idxOff, "source size %d disagrees with %s%v (%d bytes)", e.SourceSize, e.DType, e.Shape, sz)
		}
		if e.Transposed && len(e.Shape) != 2 {
			return bad(e.Name, r.idxOff, "transposed record of %d dimensions (a transposed record is a matrix)", len(e.Shape))
		}
		if e.CodecID == codecNone && e.PayloadSize != e.SourceSize {
			return bad(e.Name, e.RecordOffset, "payload of %d bytes for %d source bytes stored unchanged", e.PayloadSize, e.SourceSize)
		}
		if e.SourceFile < 0 || e.SourceFile >= nfiles {
			return bad(e.Name, r.idxOff, "source file %d out of range", e.SourceFile)
		}
		if e.RecordOffset != next && e.RecordOffset < next {
			return bad(e.Name, e.RecordOffset, "record overlaps the previous one")
		}
		if e.RecordOffset < HeaderSize || e.RecordSize < 8+4 || e.PayloadSize < 0 ||
			e.RecordSize > r.idxOff-e.RecordOffset ||
			e.PayloadOffset < e.RecordOffset+8 || e.PayloadOffset > e.RecordOffset+e.RecordSize ||
			e.PayloadSize != e.RecordOffset+e.RecordSize-4-e.PayloadOffset {
			return bad(e.Name, e.RecordOffset, "record offsets out of range")
		}
		if e.PayloadOffset-e.RecordOffset-8 > MaxRecordHeader {
			return bad(e.Name, e.RecordOffset, "record header too large")
		}
		next = e.RecordOffset + e.RecordSize
	}
	if o := ix.GGUFInfoOrder; o != nil {
		seen := make(map[string]bool, len(o))
		for _, n := range o {
			if _, ok := r.byName[n]; !ok || seen[n] {
				return bad(n, r.idxOff, "GGUF info order names an unknown tensor or one twice")
			}
			seen[n] = true
		}
		if len(o) != len(ix.Tensors) {
			return bad("", r.idxOff, "GGUF info order lists %d of %d tensors", len(o), len(ix.Tensors))
		}
	}
	return nil
}

// Name returns the file name used in errors.
func (r *Reader) Name() string { return r.name }

// Size returns the file size.
func (r *Reader) Size() int64 { return r.size }

// Index returns the parsed index. Callers must not modify it.
func (r *Reader) Index() *Index { return &r.idx }

// Entries returns the records in file order.
func (r *Reader) Entries() []Entry { return r.idx.Tensors }

// Meta returns the source checkpoint's metadata.
func (r *Reader) Meta() *formats.Meta { return r.idx.Source }

// Lookup returns the position of the named tensor.
func (r *Reader) Lookup(name string) (int, error) {
	i, ok := r.byName[name]
	if !ok {
		return -1, &Error{File: r.name, Tensor: name, Offset: r.idxOff, Err: ErrNotFound}
	}
	return i, nil
}

// PayloadSection returns a reader over record i's payload, unchecked.
func (r *Reader) PayloadSection(i int) *io.SectionReader {
	e := &r.idx.Tensors[i]
	return io.NewSectionReader(r.r, e.PayloadOffset, e.PayloadSize)
}

// Payload returns record i's payload after checking its record header
// against the index and its CRC32C. For a memory-mapped file the slice
// aliases the map (valid until Close; call Release when done).
func (r *Reader) Payload(i int) ([]byte, error) {
	e := &r.idx.Tensors[i]
	var rec []byte
	if r.data != nil {
		r.m.WillNeed(e.RecordOffset, e.RecordSize)
		rec = r.data[e.RecordOffset : e.RecordOffset+e.RecordSize]
	} else {
		rec = make([]byte, e.RecordSize)
		if _, err := r.r.ReadAt(rec, e.RecordOffset); err != nil {
			return nil, r.errAt(e, e.RecordOffset, err)
		}
	}
	if err := r.checkRecord(e, rec); err != nil {
		return nil, err
	}
	p := e.PayloadOffset - e.RecordOffset
	return rec[p : p+e.PayloadSize], nil
}

func (r *Reader) checkRecord(e *Entry, rec []byte) error {
	if !bytes.Equal(rec[:4], recMagic[:]) {
		return r.errAt(e, e.RecordOffset, fmt.Errorf("%w: bad record magic", ErrCorrupt))
	}
	hl := int64(binary.LittleEndian.Uint32(rec[4:]))
	if 8+hl != e.PayloadOffset-e.RecordOffset {
		return r.errAt(e, e.RecordOffset+4, fmt.Errorf("%w: record header length disagrees with the index", ErrCorrupt))
	}
	crc := crc32.Checksum(rec[:len(rec)-4], castagnoli)
	if want := binary.LittleEndian.Uint32(rec[len(rec)-4:]); crc != want || crc != e.CRC32C {
		return r.errAt(e, e.RecordOffset, ErrChecksum)
	}
	if err := parseRecordHeader(rec[8:8+hl], e); err != nil {
		return r.errAt(e, e.RecordOffset+8, err)
	}
	return nil
}

// Verify checks record i (header against index, CRC32C) reading it in
// bounded chunks, so a file of any size is verified in little memory.
func (r *Reader) Verify(i int) error { return r.VerifyContext(context.Background(), i) }

// VerifyContext is Verify that stops between chunks, returning ctx's
// error, when ctx is cancelled.
func (r *Reader) VerifyContext(ctx context.Context, i int) error {
	e := &r.idx.Tensors[i]
	defer r.Release(i)
	return r.checkRecordStream(ctx, e)
}

func (r *Reader) checkRecordStream(ctx context.Context, e *Entry) error {
	hl := e.PayloadOffset - e.RecordOffset
	head := make([]byte, hl)
	if _, err := r.r.ReadAt(head, e.RecordOffset); err != nil {
		return r.errAt(e, e.RecordOffset, err)
	}
	if !bytes.Equal(head[:4], recMagic[:]) {
		return r.errAt(e, e.RecordOffset, fmt.Errorf("%w: bad record magic", ErrCorrupt))
	}
	if int64(binary.LittleEndian.Uint32(head[4:]))+8 != hl {
		return r.errAt(e, e.RecordOffset+4, fmt.Errorf("%w: record header length disagrees with the index", ErrCorrupt))
	}
	if err := parseRecordHeader(head[8:], e); err != nil {
		return r.errAt(e, e.RecordOffset+8, err)
	}
	h := crc32.New(castagnoli)
	h.Write(head)
	// Read the payload in chunks, dropping each chunk's pages of a
	// memory-mapped file once hashed, so that a record of any size is
	// checked in about one chunk of memory.
	buf := make([]byte, min(1<<20, e.PayloadSize))
	for off, end := e.PayloadOffset, e.PayloadOffset+e.PayloadSize; off < end; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(int64(len(buf)), end-off)
		if _, err := r.r.ReadAt(buf[:n], off); err != nil {
			return r.errAt(e, off, err)
		}
		h.Write(buf[:n])
		r.m.Release(off, n) // no-op unless memory-mapped
		off += n
	}
	var c [4]byte
	if _, err := r.r.ReadAt(c[:], e.PayloadOffset+e.PayloadSize); err != nil {
		return r.errAt(e, e.PayloadOffset+e.PayloadSize, err)
	}
	if crc := h.Sum32(); crc != binary.LittleEndian.Uint32(c[:]) || crc != e.CRC32C {
		return r.errAt(e, e.RecordOffset, ErrChecksum)
	}
	return nil
}

func (r *Reader) errAt(e *Entry, off int64, err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = fmt.Errorf("%w: unexpected end of file", ErrCorrupt)
	}
	return &Error{File: r.name, Tensor: e.Name, Offset: off, Err: err}
}

// Release drops record i's pages from resident memory (memory-mapped
// readers only).
func (r *Reader) Release(i int) {
	if r.m != nil {
		e := &r.idx.Tensors[i]
		r.m.Release(e.RecordOffset, e.RecordSize)
	}
}

// Close releases the file.
func (r *Reader) Close() error {
	if r.m != nil {
		err := r.m.Close()
		r.m, r.data = nil, nil
		return err
	}
	return nil
}

// PayloadParts returns record i's payload after checking its record
// header against the index, but not yet its CRC32C: the caller reads the
// payload in parts, hashes each with the returned PayloadHash and must
// discard everything made of the payload unless PayloadHash.Check then
// succeeds. For a memory-mapped file the slice aliases the map, and each
// part can be dropped from resident memory with ReleasePayload, so that a
// payload larger than memory is read once in little memory. Without a
// memory map it is Payload (checked at once).
func (r *Reader) PayloadParts(i int) ([]byte, *PayloadHash, error) {
	e := &r.idx.Tensors[i]
	if r.data == nil {
		p, err := r.Payload(i)
		return p, &PayloadHash{checked: true}, err
	}
	r.m.WillNeed(e.RecordOffset, e.RecordSize) // start readahead of the whole record
	rec := r.data[e.RecordOffset : e.RecordOffset+e.RecordSize]
	if !bytes.Equal(rec[:4], recMagic[:]) {
		return nil, nil, r.errAt(e, e.RecordOffset, fmt.Errorf("%w: bad record magic", ErrCorrupt))
	}
	hl := int64(binary.LittleEndian.Uint32(rec[4:]))
	if 8+hl != e.PayloadOffset-e.RecordOffset {
		return nil, nil, r.errAt(e, e.RecordOffset+4, fmt.Errorf("%w: record header length disagrees with the index", ErrCorrupt))
	}
	if err := parseRecordHeader(rec[8:8+hl], e); err != nil {
		return nil, nil, r.errAt(e, e.RecordOffset+8, err)
	}
	h := &PayloadHash{r: r, e: e, crc: crc32.Update(0, castagnoli, rec[:8+hl]),
		want: binary.LittleEndian.Uint32(rec[len(rec)-4:])}
	return rec[8+hl : 8+hl+e.PayloadSize], h, nil
}

// PayloadHash checks a payload read in parts (Reader.PayloadParts).
type PayloadHash struct {
	r       *Reader
	e       *Entry
	crc     uint32
	want    uint32
	checked bool
}

// Add hashes the next part of the payload.
func (h *PayloadHash) Add(p []byte) {
	if !h.checked {
		h.crc = crc32.Update(h.crc, castagnoli, p)
	}
}

// Check reports a checksum error unless the parts added were the whole
// payload as written.
func (h *PayloadHash) Check() error {
	if h.checked {
		return nil
	}
	if h.crc != h.want || h.crc != h.e.CRC32C {
		return h.r.errAt(h.e, h.e.RecordOffset, ErrChecksum)
	}
	return nil
}

// ReleasePayload drops the pages of bytes [off, off+n) of record i's
// payload from resident memory (memory-mapped readers only).
func (r *Reader) ReleasePayload(i int, off, n int64) {
	if r.m != nil {
		e := &r.idx.Tensors[i]
		off = max(min(off, e.PayloadSize), 0)
		r.m.Release(e.PayloadOffset+off, min(n, e.PayloadSize-off))
	}
}
