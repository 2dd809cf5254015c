// Package codec defines the Codec interface that compresses one tensor, and
// a registry of codecs keyed by a stable numeric ID, in the manner of
// image.RegisterFormat: each codec package registers itself in its init
// function, and importing it (usually for side effects, as
// cmd/tpconvert does) makes it available by name and by ID.
package codec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/tpconvert/tpconvert/tensor"
)

// Stable codec IDs. They are written to .tpk files: IDs are only ever added,
// and a retired ID stays reserved here.
const (
	IDNone      uint16 = 0  // raw source bytes
	IDF16       uint16 = 1  // IEEE binary16
	IDBF16      uint16 = 2  // bfloat16
	IDInt8      uint16 = 3  // per-row symmetric INT8
	IDInt4      uint16 = 4  // grouped asymmetric INT4
	IDLossless  uint16 = 5  // bit-exact entropy coding
	IDTenpakXV1 uint16 = 16 // TenPak-X v1
	IDTenpakXV2 uint16 = 17 // TenPak-X v2
	IDTenpakXV3 uint16 = 18 // TenPak-X v3 (entropy-coded)
)

// Options configures a codec when it is created for encoding. Zero values
// mean "the codec's default". Seed and Workers apply to every codec; a
// codec's Factory refuses, with an error wrapping ErrOption, a Rank or
// GroupSize it does not take (Options.Only), instead of ignoring it.
type Options struct {
	// Rank of low-rank factors (TenPak-X v1; default 32).
	Rank int
	// GroupSize is the number of weights that share a scale and offset
	// (int4 default 32; TenPak-X v1 default one row).
	GroupSize int
	// Seed seeds every random choice (default 0). A codec that makes no
	// random choice is unaffected by it.
	Seed uint64
	// Workers is the number of goroutines one tensor's Encode and Decode
	// may use (default 0: GOMAXPROCS; at least 0). The payload does not
	// depend on it.
	Workers int
}

// ErrOption is returned (wrapped) by a Factory for an option the codec
// does not take or a value out of its range.
var ErrOption = errors.New("codec: option does not apply")

// Takes lists the options of Options, besides Seed and Workers, that a
// codec takes (Options.Only).
type Takes uint8

// The options a codec may take.
const (
	TakesRank Takes = 1 << iota
	TakesGroupSize
)

// Only returns an error wrapping ErrOption if o sets an option that the
// codec name does not take, or a negative Workers; nil otherwise.
func (o Options) Only(name string, takes Takes) error {
	switch {
	case o.Rank != 0 && takes&TakesRank == 0:
		return fmt.Errorf("%w: %s takes no rank (got %d)", ErrOption, name, o.Rank)
	case o.GroupSize != 0 && takes&TakesGroupSize == 0:
		return fmt.Errorf("%w: %s takes no group size (got %d)", ErrOption, name, o.GroupSize)
	case o.Workers < 0:
		return fmt.Errorf("%w: %s: %d workers per tensor", ErrOption, name, o.Workers)
	}
	return nil
}

// PerTensor returns o.Workers, or GOMAXPROCS when it is 0: the goroutines
// one tensor's Encode and Decode use.
func (o Options) PerTensor() int {
	if o.Workers > 0 {
		return o.Workers
	}
	return runtime.GOMAXPROCS(0)
}

// Accepts reports whether the codec registered under name can be created
// with o (for example whether it takes a rank).
func Accepts(name string, o Options) bool {
	mu.RLock()
	e, ok := byName[name]
	mu.RUnlock()
	if !ok {
		return false
	}
	_, err := e.factory(o)
	return err == nil
}

// Codec compresses and decompresses one tensor.
//
// A payload is self-describing: Decode needs only the payload and the
// tensor's Info (name, source dtype, shape) from the record.
type Codec interface {
	// ID is the codec's stable numeric ID, written to every record.
	ID() uint16
	// Name is the codec's stable name ("tenpak_x_v1").
	Name() string
	// Version is the payload format version written to every record.
	// Decoders accept every version up to their own.
	Version() uint16
	// Params describes the encoding parameters ("rank=32 group=4096"),
	// recorded beside the payload for inspection.
	Params() string
	// Encode writes the payload for tensor t whose elements are x
	// (row-major; len(x) == t.Elems()).
	Encode(w io.Writer, t tensor.Info, x []float32) error
	// Decode reconstructs t's elements from payload into dst
	// (len(dst) == t.Elems()). version is the record's codec version.
	Decode(dst []float32, payload []byte, t tensor.Info, version uint16) error
	// Cost estimates the peak working memory, in bytes, that Encode or
	// Decode needs for t beyond the input and output buffers. The
	// pipeline reserves it before the work starts.
	Cost(t tensor.Info) int64
}

// ErrorBounder is implemented by codecs that state the largest relative
// error, ||x − x'||₂ / ||x||₂, they are trusted to reach on tensor t. The
// pipeline decodes every lossy encoding and stores the tensor unchanged
// instead when the decoded tensor is not finite or its error exceeds the
// bound (see MaxRelErr).
type ErrorBounder interface {
	MaxRelErr(t tensor.Info) float64
}

// DefaultMaxRelErr is the bound of codecs that do not state one.
const DefaultMaxRelErr = 0.5

// MaxRelErr returns c's stated error bound for t (DefaultMaxRelErr when it
// states none).
func MaxRelErr(c Codec, t tensor.Info) float64 {
	if b, ok := c.(ErrorBounder); ok {
		return b.MaxRelErr(t)
	}
	return DefaultMaxRelErr
}

// TensorParamser is implemented by codecs whose parameters differ per
// tensor (tenpak_x_v2's rate control); the pipeline records
// TensorParams(t) instead of Params for each tensor.
type TensorParamser interface {
	TensorParams(t tensor.Info) string
}

// ByteCodec is implemented by codecs that code a tensor's source bytes
// rather than its float32 values: the "none" codec, whose records the
// pipeline writes as the source bytes without calling it, and lossless
// codecs, which the pipeline calls with the source bytes (through their
// Append method when they have one, as codec/lossless does, else through
// EncodeBytes).
type ByteCodec interface {
	Codec
	EncodeBytes(w io.Writer, t tensor.Info, src []byte) error
}

// ByteDecoder is implemented by lossless codecs other than "none": they
// restore a record's source bytes exactly (for every dtype, ggml blocks
// included), and the pipeline writes those bytes instead of decoding to
// float32. A record of such a codec restores like one stored with "none".
type ByteDecoder interface {
	ByteCodec
	// DecodeBytes checks payload against t and returns t's source bytes
	// (len == the byte size of t.DType and t.Shape).
	DecodeBytes(payload []byte, t tensor.Info, version uint16) ([]byte, error)
}

// IsByteDecoder reports whether the codec registered under id restores
// source bytes exactly (the none codec, or a ByteDecoder).
func IsByteDecoder(id uint16) bool {
	if id == IDNone {
		return true
	}
	c, err := ByID(id)
	if err != nil {
		return false
	}
	_, ok := c.(ByteDecoder)
	return ok
}

// RowCodec is implemented by codecs whose payload is the concatenation of
// the payloads of a tensor's rows (slices along its first dimension),
// each RowBytes(t) bytes, encoded and decoded independently: the payload
// of rows [r0, r1) is bytes [r0*RowBytes(t), r1*RowBytes(t)) and is what
// Encode writes, and Decode reads, for the tensor of those rows alone. The
// pipeline then processes a large tensor in row chunks.
type RowCodec interface {
	Codec
	RowBytes(t tensor.Info) int64
}

// RowDecoder is implemented by codecs whose payload, though not a
// concatenation of row payloads, decodes matrix rows (t.Matrix)
// independently: DecodeRows decodes rows [r0, r1) of t from the whole
// payload into dst (len(dst) = (r1−r0)·cols), with the same values as
// Decode. It checks the header and length as Decode does, and the
// parameters of those rows only. The pipeline then restores a large record
// in row chunks.
type RowDecoder interface {
	DecodeRows(dst []float32, payload []byte, t tensor.Info, version uint16, r0, r1 int64) error
}

// FloatDecoder is implemented by codecs that decode matrix rows (t.Matrix)
// [r0, r1) straight into the bytes of a float dtype d, with the bytes
// tensor.FromFloat32 gives of the values DecodeRows decodes, and without
// holding the rows as float32. A payload that would decode to a value
// that is not finite is corrupt (an error), so the values written are
// always finite.
type FloatDecoder interface {
	DecodeRowsTo(dst []byte, d tensor.DType, payload []byte, t tensor.Info, version uint16, r0, r1 int64) error
}

// RowEncoder is implemented by codecs whose payload, though not a
// concatenation of row payloads, has a size known in advance and encodes
// matrix rows (t.Matrix) independently into fixed places of it: after
// BeginRows and one EncodeRows call for each range of a partition of the
// rows, in any order, payload holds the bytes Encode writes for the whole
// tensor. Calls for disjoint ranges may run concurrently when their
// bounds are multiples of 8 (or the number of rows), which EncodeRows
// requires. EncodeRows refuses values the codec cannot represent as Encode
// does (an error wrapping ErrUnsupported), naming elements by their index
// in the whole tensor. The pipeline then encodes a large tensor in row
// chunks, holding only its payload.
type RowEncoder interface {
	// PayloadSize returns the exact size of t's payload, or an error
	// (wrapping ErrUnsupported for a shape the codec cannot code).
	PayloadSize(t tensor.Info) (int64, error)
	// BeginRows writes the bytes of the payload that belong to no row
	// (a header) into payload (PayloadSize(t) bytes).
	BeginRows(payload []byte, t tensor.Info) error
	// EncodeRows codes rows [r0, r1) of t, whose elements are x
	// (len(x) = (r1−r0)·cols), into payload.
	EncodeRows(payload []byte, t tensor.Info, x []float32, r0, r1 int64) error
}

// StreamEncoder is implemented by codecs whose payload's size depends on
// the values but whose statistics come from passes over a matrix's rows
// (t.Matrix) in order, and whose payload is a header followed by chunks
// of rows coded independently. The pipeline then encodes a tensor larger
// than its budget holding only a window of rows: EncodeStream reads the
// rows from src as often as it needs, keeps the coded chunks in a Spill
// (or codes them again from src when they are written), and returns the
// payload's exact size before any byte of it is written.
type StreamEncoder interface {
	Codec
	// StreamAlign returns the rows of t a chunk holds (the last what
	// remains); windows of rows are multiples of it.
	StreamAlign(t tensor.Info) int64
	// StreamCost returns EncodeStream's working memory for t with
	// windows of rows rows, besides src's: the window's values, its
	// goroutines' scratch and the statistics of t.
	StreamCost(t tensor.Info, rows int64) int64
	// EncodeStream encodes t, reading rows from src in windows of at
	// most rows rows (at least StreamAlign), and returns its payload's
	// coder: the bytes are those Encode writes for all of t's values.
	// It stops with ctx's error between windows, and calls done(n) for
	// the elements it has coded (adding up to at most t.Elems()). With a
	// spill (nil: none), it writes the coded chunks there; a spill that
	// fails is given up and the chunks are coded again from src.
	EncodeStream(ctx context.Context, t tensor.Info, src RowSource, rows int64, spill Spill, done func(elems int64)) (StreamChunks, error)
}

// RowSource gives a matrix's rows (StreamEncoder). Calls may run
// concurrently.
type RowSource interface {
	// Rows writes rows [r0, r1) of the matrix to dst ((r1−r0)·cols
	// values).
	Rows(dst []float32, r0, r1 int64) error
}

// StreamChunks codes and decodes the chunks of one payload
// (StreamEncoder): Chunks, and the values the chunks decode to, so that
// the pipeline checks the coding a window at a time.
type StreamChunks interface {
	Chunks
	// Len returns the number of chunks.
	Len() int
	// ChunkRows returns the matrix rows [r0, r1) chunk k codes.
	ChunkRows(k int) (r0, r1 int64)
	// DecodeChunks writes the decoded values of chunks [k0, k1) to dst
	// (their rows' length), as Decode of the whole payload would. Calls
	// may run concurrently.
	DecodeChunks(dst []float32, k0, k1 int) error
}

// ChunkEncoder is implemented by lossless byte codecs whose payload is a
// header followed by chunks, each coding ChunkBytes(t) consecutive source
// bytes (the last chunk what remains) independently of the others. The
// pipeline then codes a large tensor in parts: MeasureChunks reads the
// source once to learn the payload's exact size (a record's size comes
// before its payload), and the chunks are read back from a Spill as they
// are written, or coded again without one.
type ChunkEncoder interface {
	ByteCodec
	// ChunkBytes returns the source bytes each chunk of t codes, or 0
	// when t is coded whole.
	ChunkBytes(t tensor.Info) int64
	// MeasureChunks reads the source bytes src of t in order, window
	// chunks at a time, calls release(off, n) for each range of src it
	// is done with, and returns t's chunk coder; it stops with ctx's
	// error between windows. Its memory besides src is its goroutines'
	// scratch. With a spill (nil: none), it writes the chunks it codes
	// there, and the coder's AppendChunks reads them back instead of
	// coding them again; a spill that fails (a full disk) is given up and
	// the chunks are coded again: the bytes are the same either way.
	MeasureChunks(ctx context.Context, t tensor.Info, src []byte, window int, release func(off, n int64), spill Spill) (Chunks, error)
}

// Spill is scratch space for coded chunks, typically an unlinked
// temporary file beside the output (*os.File). Its reads and writes may
// run concurrently at disjoint offsets.
type Spill interface {
	io.ReaderAt
	io.WriterAt
}

// Chunks codes one tensor's payload in parts (ChunkEncoder).
type Chunks interface {
	// Size is the payload's exact size: that of what EncodeBytes writes.
	Size() int64
	// AppendChunks appends chunks [k0, k1) to dst, the header before
	// chunk 0 and any padding after the last, so that the parts of a
	// partition of the chunks, in order, are the bytes EncodeBytes
	// writes. Calls may run concurrently.
	AppendChunks(dst []byte, k0, k1 int) ([]byte, error)
}

// ChunkDecoder is implemented by the byte decoders of ChunkEncoder
// payloads, so that the pipeline restores a large record in parts.
type ChunkDecoder interface {
	ByteDecoder
	ChunkBytes(t tensor.Info) int64
	// IndexChunks checks payload against t as DecodeBytes does, reading
	// its structure once in order and calling release(off, n) for each
	// range of it that it is done with, and returns where each chunk is.
	IndexChunks(payload []byte, t tensor.Info, version uint16, release func(off, n int64)) (ChunkIndex, error)
}

// ChunkIndex decodes the chunks of one checked payload (ChunkDecoder).
type ChunkIndex interface {
	// Range returns the payload bytes [a, b) of chunks [k0, k1): chunk
	// 0's start at 0 and the last's end at the payload's end, so that a
	// partition of the chunks covers the payload once.
	Range(k0, k1 int) (a, b int64)
	// DecodeChunks writes the source bytes of chunks [k0, k1) to dst
	// (their length). Calls may run concurrently.
	DecodeChunks(dst []byte, k0, k1 int) error
}

// ProgressEncoder is implemented by codecs that report progress within a
// tensor. EncodeProgress is Encode that calls done(n) each time it has
// encoded n more elements of x (the calls add up to len(x) at most); done
// may be called from several goroutines at once.
type ProgressEncoder interface {
	EncodeProgress(w io.Writer, t tensor.Info, x []float32, done func(elems int64)) error
}

// ErrUnsupported is returned (wrapped) by Encode for tensors a codec cannot
// represent; the pipeline then stores them with the "none" codec and says so.
var ErrUnsupported = errors.New("codec: tensor not supported by this codec")

// ErrCorrupt is returned (wrapped) by Decode for payloads that are
// malformed: wrong length, parameters that disagree with the tensor.
var ErrCorrupt = errors.New("codec: corrupt payload")

// ErrUnknown is returned for unknown codec names and IDs.
var ErrUnknown = errors.New("codec: unknown codec")

// Factory creates a codec configured by o, or refuses invalid options.
type Factory func(o Options) (Codec, error)

type entry struct {
	id      uint16
	name    string
	doc     string
	factory Factory
	layers  string
}

var (
	mu     sync.RWMutex
	byID   = map[uint16]*entry{}
	byName = map[string]*entry{}
	dflt   string
)

// Register makes a codec available. It panics if the ID or name is taken
// (a programmer error).
func Register(id uint16, name, doc string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := byID[id]; dup {
		panic(fmt.Sprintf("codec: ID %d registered twice", id))
	}
	if _, dup := byName[name]; dup {
		panic(fmt.Sprintf("codec: name %q registered twice", name))
	}
	e := &entry{id: id, name: name, doc: doc, factory: f}
	byID[id] = e
	byName[name] = e
}

// New returns the codec registered under name, configured by o.
func New(name string, o Options) (Codec, error) {
	mu.RLock()
	e, ok := byName[name]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknown, name, strings.Join(Names(), ", "))
	}
	return e.factory(o)
}

// ByID returns the codec registered under id with default options, for
// decoding.
func ByID(id uint16) (Codec, error) {
	mu.RLock()
	e, ok := byID[id]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%w: ID %d", ErrUnknown, id)
	}
	return e.factory(Options{})
}

// Names lists the registered codec names, sorted.
func Names() []string {
	mu.RLock()
	defer mu.RUnlock()
	names := make([]string, 0, len(byName))
	for n := range byName {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Doc returns the one-line description a codec registered with.
func Doc(name string) string {
	mu.RLock()
	defer mu.RUnlock()
	if e, ok := byName[name]; ok {
		return e.doc
	}
	return ""
}

// SetDefault declares the registered codec name the one to use when a
// caller names none (Default). It panics if name is not registered or
// another codec was declared the default (a programmer error).
func SetDefault(name string) {
	mu.Lock()
	defer mu.Unlock()
	if _, ok := byName[name]; !ok {
		panic(fmt.Sprintf("codec: default %q is not registered", name))
	}
	if dflt != "" && dflt != name {
		panic(fmt.Sprintf("codec: default declared twice (%q, %q)", dflt, name))
	}
	dflt = name
}

// Default returns the name of the codec declared by SetDefault, or "none"
// when no codec was.
func Default() string {
	mu.RLock()
	defer mu.RUnlock()
	if dflt == "" {
		return "none"
	}
	return dflt
}

// SetDefaultLayers declares which tensors the registered codec name
// compresses when the caller selects none: a layer selection in the
// words of stream.ParseLayers ("weights", "all", ...). It panics if name
// is not registered.
func SetDefaultLayers(name, layers string) {
	mu.Lock()
	defer mu.Unlock()
	e, ok := byName[name]
	if !ok {
		panic(fmt.Sprintf("codec: %q is not registered", name))
	}
	e.layers = layers
}

// DefaultLayers returns the layer selection declared for the codec name
// by SetDefaultLayers, or "" (the pipeline's default) when none was.
func DefaultLayers(name string) string {
	mu.RLock()
	defer mu.RUnlock()
	if e, ok := byName[name]; ok {
		return e.layers
	}
	return ""
}
