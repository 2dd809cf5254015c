package formats

import (
	"context"
	"fmt"

	"github.com/tpconvert/tpconvert/tensor"
)

// A record container (.tpk) holds one record per tensor: the tensor as it
// was in the source, the codec that encoded its payload, and the payload.
// The pipeline writes records to a RecordSink and reads them from a
// RecordSource; formats/tpk implements both.

// Stats are reconstruction statistics measured at encode time against the
// original values, kept so inspect can show them without the source.
type Stats struct {
	RelErr float64 `json:"rel_err"` // ||W-W'||_F / ||W||_F
	SQNRdB float64 `json:"sqnr_db"` // 10·log10(||W||² / ||W-W'||²)
}

// Record describes one record. It is stored in the index; the record header
// repeats its identifying fields so a damaged index can be diagnosed.
type Record struct {
	Name         string       `json:"name"`
	DType        tensor.DType `json:"dtype"`
	Shape        []int64      `json:"shape"`
	Codec        string       `json:"codec"`
	CodecID      uint16       `json:"codec_id"`
	CodecVersion uint16       `json:"codec_version"`
	Params       string       `json:"params,omitempty"`
	// Transposed is set when the codec saw the matrix transposed (a GPT-2
	// Conv1D weight stored [in, out] is encoded as [out, in]).
	Transposed bool `json:"transposed,omitempty"`
	// SourceFile indexes Meta.Files of the source.
	SourceFile int `json:"source_file"`
	// SourceSize is the tensor's byte size in the source file.
	SourceSize int64 `json:"source_size"`

	RecordOffset  int64  `json:"record_offset"`
	RecordSize    int64  `json:"record_size"` // whole record incl. CRC
	PayloadOffset int64  `json:"payload_offset"`
	PayloadSize   int64  `json:"payload_size"`
	CRC32C        uint32 `json:"crc32c"` // over the record from its magic to the payload's end

	Stats *Stats `json:"stats,omitempty"`
}

// Info returns the tensor's description as in the source.
func (e *Record) Info() tensor.Info {
	return tensor.Info{Name: e.Name, DType: e.DType, Shape: append([]int64(nil), e.Shape...), Size: e.SourceSize, File: e.SourceFile}
}

// Error is an error located in a container file: a byte offset and, where
// one is involved, a tensor name.
type Error struct {
	File   string
	Tensor string
	Offset int64
	Err    error
}

func (e *Error) Error() string {
	s := ""
	if e.File != "" {
		s = e.File + ": "
	}
	if e.Tensor != "" {
		s += fmt.Sprintf("tensor %q: ", e.Tensor)
	}
	return s + fmt.Sprintf("%v (at byte %d)", e.Err, e.Offset)
}

func (e *Error) Unwrap() error { return e.Err }

// RecordSink writes records in order. A record is written whole
// (WriteRecord) or begun, its payload written in parts and ended
// (BeginRecord, WritePayload, EndRecord), so that a payload larger than
// memory never needs to be held. Close finishes the output (index,
// footer); it does not close the underlying writer.
type RecordSink interface {
	// WriteRecord appends one record; r describes the tensor and codec,
	// the sink fills in offsets, sizes and checksum. payload is written
	// as the concatenation of its parts.
	WriteRecord(r Record, payload ...[]byte) error
	// BeginRecord starts a record whose payload of size bytes follows.
	BeginRecord(r Record, size int64) error
	// WritePayload writes the next part of the begun record's payload.
	WritePayload(p []byte) error
	// EndRecord finishes the begun record.
	EndRecord() error
	// Last returns the record most recently written, as stored.
	Last() Record
	Close() error
}

// RecordSource gives random access to the records of a record container.
type RecordSource interface {
	// Name is the file name used in errors.
	Name() string
	// Meta returns the source checkpoint's metadata.
	Meta() *Meta
	// Entries returns the records in file order.
	Entries() []Record
	// Payload returns record i's payload, checked (checksum included). It
	// may alias a memory map: valid until Close; call Release when done.
	Payload(i int) ([]byte, error)
	// PayloadParts returns record i's payload with its checksum not yet
	// checked: the caller hashes it in parts with the PayloadHash and
	// discards everything made of it unless PayloadHash.Check succeeds.
	PayloadParts(i int) ([]byte, PayloadHash, error)
	// VerifyContext checks record i in bounded memory, stopping with
	// ctx's error when ctx is cancelled.
	VerifyContext(ctx context.Context, i int) error
	// Release drops record i's pages from resident memory.
	Release(i int)
	// ReleasePayload drops the pages of bytes [off, off+n) of record i's
	// payload from resident memory.
	ReleasePayload(i int, off, n int64)
	// Size is the file's size in bytes.
	Size() int64
	Close() error
	// Corrupt returns err located at byte off of record i and marked as
	// the container's corruption error (tpk.ErrCorrupt).
	Corrupt(i int, off int64, err error) error
}

// PayloadHash checks a payload read in parts (RecordSource.PayloadParts).
type PayloadHash interface {
	// Add hashes the next part of the payload.
	Add(p []byte)
	// Check reports a checksum error unless the parts added were the
	// whole payload as written.
	Check() error
}
