// Package tpk reads and writes .tpk files, the container that holds a
// compressed checkpoint. The layout follows archive/zip: a fixed header,
// tensor records appended as they are produced, then an index and a fixed
// footer that points at the index. A writer never needs to know a payload
// size in advance; a reader needs only an io.ReaderAt and the file size.
//
//	header  16 bytes   magic "\x89TPK\r\n\x1a\n", version u16, flags u16, reserved u32
//	record* variable   "TREC", header length u32, record header, payload, CRC32C u32
//	index   variable   JSON (see Index)
//	footer  32 bytes   magic "\x89TPKEND\n", version u16, flags u16, index CRC32C u32,
//	                   index offset u64, index length u64
//
// All integers are little-endian. SPEC.md beside this file is the normative
// description, with every limit.
package tpk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/tensor"
)

// Format constants.
const (
	// Version is the container version this package writes.
	Version = 1
	// MinVersion and MaxVersion bound the versions this package reads.
	MinVersion = 1
	MaxVersion = 1

	HeaderSize = 16
	FooterSize = 32

	// MaxIndexSize caps the index (the GGUF metadata of a large vocabulary
	// is a few MiB; 1 GiB leaves ample room).
	MaxIndexSize = 1 << 30
	// MaxRecordHeader caps a record header.
	MaxRecordHeader = 1 << 20
	// MaxNameLen caps a tensor name in bytes.
	MaxNameLen = 4096
	// MaxDims caps the number of dimensions of a tensor.
	MaxDims = 8
	// MaxParamsLen caps the codec parameter string.
	MaxParamsLen = 4096
	// MaxTensors caps the number of records.
	MaxTensors = 1 << 20
)

var (
	magic       = [8]byte{0x89, 'T', 'P', 'K', '\r', '\n', 0x1a, '\n'}
	footerMagic = [8]byte{0x89, 'T', 'P', 'K', 'E', 'N', 'D', '\n'}
	recMagic    = [4]byte{'T', 'R', 'E', 'C'}
	castagnoli  = crc32.MakeTable(crc32.Castagnoli)
)

// Sentinel errors.
var (
	ErrFormat   = errors.New("tpk: not a .tpk file")
	ErrVersion  = errors.New("tpk: unsupported tpk version")
	ErrChecksum = errors.New("tpk: checksum mismatch")
	ErrCorrupt  = errors.New("tpk: corrupt file")
	ErrNotFound = errors.New("tpk: no such tensor")
)

// Error is an error located in a .tpk file: a byte offset and, where one is
// involved, a tensor name.
type Error = formats.Error

// Stats are reconstruction statistics measured at encode time.
type Stats = formats.Stats

// Entry describes one record (formats.Record).
type Entry = formats.Record

// Index is the JSON document between the records and the footer.
type Index struct {
	Version   int           `json:"version"`
	CreatedBy string        `json:"created_by,omitempty"`
	Source    *formats.Meta `json:"source"`
	// GGUFInfoOrder is the GGUF tensor-info order when it differs from
	// record order (nil otherwise): Source.GGUF.InfoOrder, kept here
	// rather than in the source object.
	GGUFInfoOrder []string `json:"gguf_info_order,omitempty"`
	Tensors       []Entry  `json:"tensors"`
}

// record flags
const flagTransposed = 1

// codecNone is the ID of the "none" codec (codec.IDNone), whose payload is
// the source bytes: its size must be the source size.
const codecNone = 0

// appendRecordHeader encodes the record header that follows the record
// magic and length.
func appendRecordHeader(b []byte, e *Entry) []byte {
	b = binary.LittleEndian.AppendUint16(b, uint16(len(e.Name)))
	b = append(b, e.Name...)
	b = binary.LittleEndian.AppendUint16(b, uint16(e.DType))
	b = append(b, byte(len(e.Shape)))
	for _, d := range e.Shape {
		b = binary.LittleEndian.AppendUint64(b, uint64(d))
	}
	b = binary.LittleEndian.AppendUint16(b, e.CodecID)
	b = binary.LittleEndian.AppendUint16(b, e.CodecVersion)
	var flags byte
	if e.Transposed {
		flags |= flagTransposed
	}
	b = append(b, flags)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(e.Params)))
	b = append(b, e.Params...)
	b = binary.LittleEndian.AppendUint64(b, uint64(e.PayloadSize))
	return b
}

// parseRecordHeader decodes a record header and checks it against e.
func parseRecordHeader(b []byte, e *Entry) error {
	d := decoder{b: b}
	name := d.bytes(int(d.u16()))
	dt := tensor.DType(d.u16())
	nd := int(d.u8())
	if nd > MaxDims {
		return fmt.Errorf("%w: %d dimensions", ErrCorrupt, nd)
	}
	shape := make([]int64, nd)
	for i := range shape {
		shape[i] = int64(d.u64())
	}
	id, ver := d.u16(), d.u16()
	flags := d.u8()
	params := d.bytes(int(d.u16()))
	size := int64(d.u64())
	if d.err != nil || len(d.b) != 0 {
		return fmt.Errorf("%w: malformed record header", ErrCorrupt)
	}
	switch {
	case string(name) != e.Name:
		return fmt.Errorf("%w: record names %q, index %q", ErrCorrupt, name, e.Name)
	case dt != e.DType || id != e.CodecID || ver != e.CodecVersion || string(params) != e.Params || size != e.PayloadSize || (flags&flagTransposed != 0) != e.Transposed || flags&^flagTransposed != 0:
		return fmt.Errorf("%w: record header disagrees with the index", ErrCorrupt)
	}
	if len(shape) != len(e.Shape) {
		return fmt.Errorf("%w: record shape disagrees with the index", ErrCorrupt)
	}
	for i := range shape {
		if shape[i] != e.Shape[i] {
			return fmt.Errorf("%w: record shape disagrees with the index", ErrCorrupt)
		}
	}
	return nil
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil || n < 0 || n > len(d.b) {
		d.err = ErrCorrupt
		d.b = nil
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}
func (d *decoder) bytes(n int) []byte { return d.take(n) }
func (d *decoder) u8() byte {
	if b := d.take(1); b != nil {
		return b[0]
	}
	return 0
}
func (d *decoder) u16() uint16 {
	if b := d.take(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}
func (d *decoder) u64() uint64 {
	if b := d.take(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func crc32c(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }
