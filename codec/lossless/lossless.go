// Package lossless registers the lossless codec (ID 5): every tensor comes
// back bit-exact, in its source dtype.
//
// Floating-point values (F16, BF16, F32, F64) are rotated left by one bit,
// so that the sign sits in bit 0 and the exponent fills the top byte, and
// split into byte planes; each plane of each chunk of 65536 values is
// Huffman-coded with github.com/klauspost/compress/huff0, or stored raw
// when that does not pay, or as one byte when the plane is constant. An
// F32 tensor whose values are all exactly BF16 (or F16) is stored as BF16
// (F16) and widened back bit for bit. Other dtypes (integers, bool, FP8,
// ggml blocks) are cut into chunks of 256 KiB, each stored raw or with
// zstd, whichever is smaller. Chunks are encoded and decoded in parallel;
// the payload layout is in formats/tpk/CODECS.md.
package lossless

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/huff0"
	"github.com/klauspost/compress/zstd"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/codec/internal/par"
	"github.com/tpconvert/tpconvert/tensor"
)

func init() {
	codec.Register(codec.IDLossless, "lossless", "bit-exact: entropy-coded byte planes (floats), zstd or raw (other dtypes)", func(o codec.Options) (codec.Codec, error) {
		if err := o.Only("lossless", 0); err != nil {
			return nil, err
		}
		return &Codec{workers: o.Workers}, nil
	})
}

// Forms: how the values of a payload are stored.
const (
	FormBytes    = 0 // the source bytes, chunked, zstd or raw
	FormF16      = 1 // F16 source, byte planes
	FormBF16     = 2 // BF16 source, byte planes
	FormF32      = 3 // F32 source, byte planes
	FormF64      = 4 // F64 source, byte planes
	FormF32AsB16 = 5 // F32 source whose values are all BF16: their top halves, byte planes
	FormF32AsF16 = 6 // F32 source whose values are all F16: as F16, byte planes
	numForms     = 7
)

// Plane modes.
const (
	modeRaw   = 0 // the plane's bytes as they are
	modeHuff  = 1 // huff0 4-stream block with its table
	modeConst = 2 // one byte, repeated for every value of the chunk
	modeZstd  = 3 // one zstd frame (FormBytes only)
)

const (
	layout = 1
	// FloatChunk is the number of values in every chunk of a float form
	// but the last; BytesChunk the bytes in every chunk of FormBytes.
	FloatChunk = 1 << 16
	BytesChunk = 1 << 18
	headerSize = 14
	planeHead  = 5
	// MaxElemsPerByte is the densest payload: an encoder pads with zero
	// bytes to at least ceil(elements/MaxElemsPerByte) bytes, the bound
	// that tpk decoders apply to every record before allocating.
	MaxElemsPerByte = 64
)

var (
	zenc     *zstd.Encoder
	zdec     *zstd.Decoder
	zoneInit sync.Once
	zerr     error
)

func zstdCoders() (*zstd.Encoder, *zstd.Decoder, error) {
	zoneInit.Do(func() {
		zenc, zerr = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
		if zerr != nil {
			return
		}
		zdec, zerr = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0), zstd.WithDecoderMaxMemory(BytesChunk), zstd.WithDecodeAllCapLimit(true))
	})
	return zenc, zdec, zerr
}

// Codec is the lossless codec. The zero value is ready to use.
type Codec struct {
	workers int
}

// SetWorkers sets the number of goroutines that code the chunks of one
// tensor (default GOMAXPROCS). The payload does not depend on it.
func (c *Codec) SetWorkers(n int) { c.workers = n }

func (c *Codec) nworkers() int { return codec.Options{Workers: c.workers}.PerTensor() }

// ID implements codec.Codec.
func (*Codec) ID() uint16 { return codec.IDLossless }

// Name implements codec.Codec.
func (*Codec) Name() string { return "lossless" }

// Version implements codec.Codec.
func (*Codec) Version() uint16 { return 1 }

// Params implements codec.Codec.
func (*Codec) Params() string { return "" }

// Cost implements codec.Codec: the payload or decoded buffer (at most the
// source size plus the headers) and each worker's chunk scratch.
func (c *Codec) Cost(t tensor.Info) int64 {
	size := t.Size
	if size <= 0 {
		if s, err := tensor.ByteSize(t.DType, t.Shape); err == nil {
			size = s
		}
	}
	// Each chunk in flight has scratch of 4 chunk sizes; a small tensor
	// has fewer and smaller chunks than the workers.
	scratch := min(int64(c.nworkers())*4*BytesChunk, 4*size)
	return size + maxOverhead(size) + scratch
}

// maxOverhead bounds the bytes a payload of a size-byte tensor has beyond
// size: the header and one 5-byte plane header per plane of every chunk
// (8 planes of FloatChunk values at most, one of BytesChunk).
func maxOverhead(size int64) int64 {
	return headerSize + 8*planeHead*(size/FloatChunk+1) + size/MaxElemsPerByte + 1
}

func width(form int) int {
	switch form {
	case FormBytes:
		return 1
	case FormF32:
		return 4
	case FormF64:
		return 8
	}
	return 2
}

func chunkOf(form int) int {
	if form == FormBytes {
		return BytesChunk
	}
	return FloatChunk
}

// chooseForm picks the form for src of dtype d, reading src window bytes
// at a time (0: at once) and calling release (if not nil) after each.
func chooseForm(d tensor.DType, src []byte, window int64, release func(off, n int64)) int {
	switch d {
	case tensor.F16:
		return FormF16
	case tensor.BF16:
		return FormBF16
	case tensor.F64:
		return FormF64
	case tensor.F32:
		if every(src, window, release, allBF16) {
			return FormF32AsB16
		}
		if every(src, window, release, allF16) {
			return FormF32AsF16
		}
		return FormF32
	}
	return FormBytes
}

// every reports whether all holds for each window of src (a multiple of
// 4 bytes), stopping at the first that fails.
func every(src []byte, window int64, release func(off, n int64), all func([]byte) bool) bool {
	if window <= 0 || window >= int64(len(src)) {
		ok := all(src)
		if release != nil {
			release(0, int64(len(src)))
		}
		return ok
	}
	window = max(window/4*4, 4)
	for off := int64(0); off < int64(len(src)); off += window {
		n := min(window, int64(len(src))-off)
		ok := all(src[off : off+n])
		if release != nil {
			release(off, n)
		}
		if !ok {
			return false
		}
	}
	return true
}

func allBF16(src []byte) bool {
	for i := 0; i+4 <= len(src); i += 4 {
		if src[i]|src[i+1] != 0 {
			return false
		}
	}
	return true
}

func allF16(src []byte) bool {
	for i := 0; i+4 <= len(src); i += 4 {
		u := binary.LittleEndian.Uint32(src[i:])
		if widen[tensor.FloatToHalf(math.Float32frombits(u))] != u {
			return false
		}
	}
	return true
}

// widen maps binary16 bits to the binary32 bits of the same value, NaN
// payloads included (signalling NaNs stay signalling): CODECS.md's rule.
var widen = func() *[1 << 16]uint32 {
	var t [1 << 16]uint32
	for h := range 1 << 16 {
		s, e, m := uint32(h>>15), uint32(h>>10)&31, uint32(h)&1023
		switch {
		case e == 31:
			t[h] = s<<31 | 255<<23 | m<<13
		case e == 0:
			t[h] = s<<31 | math.Float32bits(float32(m)*0x1p-24)
		default:
			t[h] = s<<31 | (e+112)<<23 | m<<13
		}
	}
	return &t
}()

// load returns value i of src (in the source dtype) as form stores it,
// an unsigned integer of width(form) bytes; store is its inverse.
func load(form int, src []byte, i int) uint64 {
	switch form {
	case FormF16, FormBF16:
		return uint64(binary.LittleEndian.Uint16(src[2*i:]))
	case FormF32:
		return uint64(binary.LittleEndian.Uint32(src[4*i:]))
	case FormF64:
		return binary.LittleEndian.Uint64(src[8*i:])
	case FormF32AsB16:
		return uint64(binary.LittleEndian.Uint32(src[4*i:]) >> 16)
	case FormF32AsF16:
		return uint64(tensor.FloatToHalf(math.Float32frombits(binary.LittleEndian.Uint32(src[4*i:]))))
	}
	return uint64(src[i])
}

func store(form int, dst []byte, i int, v uint64) {
	switch form {
	case FormF16, FormBF16:
		binary.LittleEndian.PutUint16(dst[2*i:], uint16(v))
	case FormF32:
		binary.LittleEndian.PutUint32(dst[4*i:], uint32(v))
	case FormF64:
		binary.LittleEndian.PutUint64(dst[8*i:], v)
	case FormF32AsB16:
		binary.LittleEndian.PutUint32(dst[4*i:], uint32(v)<<16)
	case FormF32AsF16:
		binary.LittleEndian.PutUint32(dst[4*i:], widen[uint16(v)])
	default:
		dst[i] = byte(v)
	}
}

// rotl rotates the w-byte value v left by one bit; rotr undoes it.
func rotl(v uint64, w int) uint64 {
	n := uint(8 * w)
	return (v<<1 | v>>(n-1)) & (1<<n - 1)
}

func rotr(v uint64, w int) uint64 {
	n := uint(8 * w)
	return (v>>1 | v<<(n-1)) & (1<<n - 1)
}

// scratch holds one worker's buffers.
type scratch struct {
	planes [8][]byte
	out    []byte
	huff   huff0.Scratch
}

var pool = sync.Pool{New: func() any { return new(scratch) }}

func (s *scratch) plane(k, n int) []byte {
	if cap(s.planes[k]) < n {
		s.planes[k] = make([]byte, n, max(n, FloatChunk))
	}
	return s.planes[k][:n]
}

// EncodeBytes implements codec.ByteCodec: it writes the payload for the
// source bytes src of tensor t.
func (c *Codec) EncodeBytes(w io.Writer, t tensor.Info, src []byte) error {
	p, err := c.Append(nil, t, src)
	if err != nil {
		return err
	}
	_, err = w.Write(p)
	return err
}

// Append appends the payload for the source bytes src of tensor t to dst.
func (c *Codec) Append(dst []byte, t tensor.Info, src []byte) ([]byte, error) {
	ch, err := begin(t, src, 0, nil)
	if err != nil {
		return nil, err
	}
	if dst == nil {
		dst = make([]byte, 0, int64(len(src))+maxOverhead(int64(len(src))))
	}
	start := len(dst)
	dst = ch.appendHeader(dst)
	nchunks := ch.count()
	// Code a batch of chunks in parallel, append it in order, go on: the
	// memory beyond the payload is one batch of chunk outputs.
	batch := max(1, c.nworkers()) * 4
	outs := make([][]byte, batch)
	for b0 := 0; b0 < nchunks; b0 += batch {
		b1 := min(b0+batch, nchunks)
		err := par.For(b1-b0, 1, 1, c.nworkers(), func(lo, hi int) error {
			for j := lo; hi > j; j++ {
				var err error
				if outs[j], err = ch.appendChunk(outs[j][:0], b0+j); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		for j := 0; j < b1-b0; j++ {
			dst = append(dst, outs[j]...)
		}
	}
	if m := minLen(t.Elems()); int64(len(dst)-start) < m {
		dst = append(dst, make([]byte, m-int64(len(dst)-start))...)
	}
	return dst, nil
}

// chunks is one tensor's payload coded in parts: its form, the values
// (or bytes, for FormBytes) per chunk, their count n and the source.
type chunks struct {
	form, chunk, n int
	src            []byte
	elems, size    int64 // the tensor's elements; the payload's size (MeasureChunks)
	body           int64 // header and chunks, before any padding
	// spill keeps the coded chunks (MeasureChunks): chunk k's sizes[k]
	// bytes at k·slot, unless spillFailed.
	spill       codec.Spill
	sizes       []int64
	slot        int64
	spillFailed atomic.Bool
}

var _ codec.ChunkEncoder = (*Codec)(nil)
var _ codec.ChunkDecoder = (*Codec)(nil)

// begin checks src against t and picks its form, reading src window
// bytes at a time and calling release (if not nil) after each.
func begin(t tensor.Info, src []byte, window int64, release func(off, n int64)) (*chunks, error) {
	size, err := tensor.ByteSize(t.DType, t.Shape)
	if err != nil {
		return nil, fmt.Errorf("lossless: tensor %q: %w", t.Name, err)
	}
	if int64(len(src)) != size {
		return nil, fmt.Errorf("lossless: tensor %q: %d source bytes for a %s tensor of %d bytes", t.Name, len(src), t.DType, size)
	}
	form := chooseForm(t.DType, src, window, release)
	n := len(src)
	if form != FormBytes {
		n = int(t.Elems())
	}
	if form == FormBytes {
		if _, _, err := zstdCoders(); err != nil {
			return nil, err
		}
	}
	return &chunks{form: form, chunk: chunkOf(form), n: n, src: src, elems: t.Elems()}, nil
}

func (ch *chunks) count() int { return (ch.n + ch.chunk - 1) / ch.chunk }

func (ch *chunks) appendHeader(dst []byte) []byte {
	dst = append(dst, layout, byte(ch.form))
	dst = binary.LittleEndian.AppendUint32(dst, uint32(ch.chunk))
	return binary.LittleEndian.AppendUint64(dst, uint64(ch.n))
}

// appendChunk appends chunk k to out.
func (ch *chunks) appendChunk(out []byte, k int) ([]byte, error) {
	return encodeChunk(out, ch.form, ch.src, k*ch.chunk, min((k+1)*ch.chunk, ch.n))
}

// srcBytes returns the source bytes of chunks [k0, k1).
func (ch *chunks) srcBytes(k0, k1 int) (off, n int64) {
	per := int64(len(ch.src)) / int64(max(ch.n, 1)) * int64(ch.chunk)
	off = int64(k0) * per
	return off, min(int64(k1)*per, int64(len(ch.src))) - off
}

// ChunkBytes implements codec.ChunkEncoder and codec.ChunkDecoder: the
// source bytes of 65536 values of a float dtype, or 256 KiB.
func (*Codec) ChunkBytes(t tensor.Info) int64 {
	size, err := tensor.ByteSize(t.DType, t.Shape)
	if err != nil || size == 0 {
		return 0
	}
	switch t.DType {
	case tensor.F16, tensor.BF16, tensor.F32, tensor.F64:
		return FloatChunk * t.DType.BlockBytes()
	}
	return BytesChunk
}

// MeasureChunks implements codec.ChunkEncoder: it codes every chunk once,
// window chunks at a time in parallel, keeping only their sizes, and with
// a spill each chunk's bytes there too, chunk k at k·slot (a sparse file
// holds only what is written).
func (c *Codec) MeasureChunks(ctx context.Context, t tensor.Info, src []byte, window int, release func(off, n int64), spill codec.Spill) (codec.Chunks, error) {
	window = max(window, 1)
	ch, err := begin(t, src, int64(window)*c.ChunkBytes(t), release)
	if err != nil {
		return nil, err
	}
	nchunks := ch.count()
	sizes := make([]int64, min(window, nchunks))
	if spill != nil {
		ch.spill, ch.sizes = spill, make([]int64, nchunks)
		in := int64(ch.chunk) * int64(width(ch.form))
		ch.slot = in + maxOverhead(in)
	}
	ch.body = headerSize
	for w0 := 0; w0 < nchunks; w0 += window {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		w1 := min(w0+window, nchunks)
		err := par.For(w1-w0, 1, 1, c.nworkers(), func(lo, hi int) error {
			buf := outPool.Get().(*[]byte)
			defer outPool.Put(buf)
			for j := lo; j < hi; j++ {
				out, err := ch.appendChunk((*buf)[:0], w0+j)
				if err != nil {
					return err
				}
				*buf, sizes[j] = out, int64(len(out))
				ch.keep(w0+j, out)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		for _, n := range sizes[:w1-w0] {
			ch.body += n
		}
		if release != nil {
			release(ch.srcBytes(w0, w1))
		}
	}
	ch.size = max(ch.body, minLen(ch.elems))
	return ch, nil
}

// keep writes chunk k's coded bytes to the spill, or gives the spill up.
func (ch *chunks) keep(k int, out []byte) {
	if ch.spill == nil || ch.spillFailed.Load() {
		return
	}
	ch.sizes[k] = int64(len(out))
	if int64(len(out)) > ch.slot {
		ch.spillFailed.Store(true)
		return
	}
	if _, err := ch.spill.WriteAt(out, int64(k)*ch.slot); err != nil {
		ch.spillFailed.Store(true)
	}
}

// appendKept appends chunk k as kept in the spill, or codes it again.
func (ch *chunks) appendKept(dst []byte, k int) ([]byte, error) {
	if ch.spill == nil || ch.spillFailed.Load() {
		return ch.appendChunk(dst, k)
	}
	n := int(ch.sizes[k])
	dst = slices.Grow(dst, n)
	if m, err := ch.spill.ReadAt(dst[len(dst):len(dst)+n], int64(k)*ch.slot); m != n || err != nil && !errors.Is(err, io.EOF) {
		return ch.appendChunk(dst, k)
	}
	return dst[:len(dst)+n], nil
}

var outPool = sync.Pool{New: func() any { return new([]byte) }}

// Size implements codec.Chunks.
func (ch *chunks) Size() int64 { return ch.size }

// AppendChunks implements codec.Chunks.
func (ch *chunks) AppendChunks(dst []byte, k0, k1 int) ([]byte, error) {
	if k0 == 0 {
		dst = ch.appendHeader(dst)
	}
	for k := k0; k < k1; k++ {
		var err error
		if dst, err = ch.appendKept(dst, k); err != nil {
			return nil, err
		}
	}
	if k1 == ch.count() && ch.size > ch.body {
		dst = append(dst, make([]byte, ch.size-ch.body)...)
	}
	return dst, nil
}

// minLen is the smallest payload for a tensor of elems elements.
func minLen(elems int64) int64 {
	return (elems + MaxElemsPerByte - 1) / MaxElemsPerByte
}

// encodeChunk appends the planes of values [v0, v1) to out.
func encodeChunk(out []byte, form int, src []byte, v0, v1 int) ([]byte, error) {
	s := pool.Get().(*scratch)
	defer pool.Put(s)
	m := v1 - v0
	if form == FormBytes {
		zenc, _, _ := zstdCoders()
		in := src[v0:v1]
		s.out = zenc.EncodeAll(in, s.out[:0])
		if len(s.out) < m {
			return appendPlane(out, modeZstd, s.out), nil
		}
		return appendPlane(out, modeRaw, in), nil
	}
	w := width(form)
	var planes [8][]byte
	for k := range w {
		planes[k] = s.plane(k, m)
	}
	if form == FormF16 || form == FormBF16 {
		split16(planes[0][:m], planes[1][:m], src[2*v0:2*v1])
	} else {
		for i := range m {
			v := rotl(load(form, src, v0+i), w)
			for k := range w {
				planes[k][i] = byte(v >> (8 * k))
			}
		}
	}
	for k := range w {
		out = appendCoded(out, planes[k], &s.huff)
	}
	return out, nil
}

// appendCoded appends plane p in the smallest of its modes.
func appendCoded(out, p []byte, hs *huff0.Scratch) []byte {
	hs.Reuse = huff0.ReusePolicyNone
	hs.Out = hs.Out[:0]
	enc, _, err := huff0.Compress4X(p, hs)
	switch {
	case errors.Is(err, huff0.ErrUseRLE):
		return appendPlane(out, modeConst, p[:1])
	case err == nil && len(enc) < len(p):
		return appendPlane(out, modeHuff, enc)
	}
	// huff0.ErrIncompressible, or no gain.
	return appendPlane(out, modeRaw, p)
}

func appendPlane(out []byte, mode byte, data []byte) []byte {
	out = append(out, mode)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(data)))
	return append(out, data...)
}

// Encode implements codec.Codec for float tensors: x is stored in
// t.DType, losslessly.
func (c *Codec) Encode(w io.Writer, t tensor.Info, x []float32) error {
	if !t.DType.IsFloat() {
		return fmt.Errorf("%w: lossless.Encode of %s values", codec.ErrUnsupported, t.DType)
	}
	b := make([]byte, int64(len(x))*t.DType.BlockBytes())
	if err := tensor.FromFloat32(b, t.DType, x); err != nil {
		return err
	}
	return c.EncodeBytes(w, t, b)
}

// Decode implements codec.Codec: it restores the source bytes and decodes
// them to float32.
func (c *Codec) Decode(dst []float32, payload []byte, t tensor.Info, version uint16) error {
	b, err := c.DecodeBytes(payload, t, version)
	if err != nil {
		return err
	}
	if err := tensor.ToFloat32(dst, t.DType, b); err != nil {
		return fmt.Errorf("%w: %v", codec.ErrCorrupt, err)
	}
	return nil
}

type plane struct {
	mode byte
	data []byte
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: lossless: %s", codec.ErrCorrupt, fmt.Sprintf(format, args...))
}

// DecodeBytes implements codec.ByteDecoder: it checks the whole payload's
// structure against t, then returns t's source bytes.
func (c *Codec) DecodeBytes(payload []byte, t tensor.Info, version uint16) ([]byte, error) {
	x, err := index(payload, t, version, nil)
	if err != nil {
		return nil, err
	}
	dst := make([]byte, x.size)
	nchunks := len(x.offs) - 1
	err = par.For(nchunks, 1, 1, c.nworkers(), func(lo, hi int) error {
		a, n := x.srcBytes(lo, hi)
		return x.DecodeChunks(dst[a:a+n], lo, hi)
	})
	if err != nil {
		return nil, err
	}
	return dst, nil
}

// chunkIndex is a checked payload: its form, values per chunk and count,
// the planes of every chunk (w each) and where each chunk starts (offs[k];
// offs[len-1] is the payload's end).
type chunkIndex struct {
	form, chunk, n, w int
	size              int64 // the source bytes
	planes            []plane
	offs              []int64
}

// index checks payload against t and finds its chunks, calling release
// (if not nil) for each range of the payload it has read the structure
// of.
func index(payload []byte, t tensor.Info, version uint16, release func(off, n int64)) (*chunkIndex, error) {
	if version != 1 {
		return nil, corrupt("version %d (supported 1)", version)
	}
	size, err := tensor.ByteSize(t.DType, t.Shape)
	if err != nil {
		return nil, corrupt("%v", err)
	}
	if len(payload) < headerSize {
		return nil, corrupt("payload of %d bytes is shorter than its header", len(payload))
	}
	if payload[0] != layout {
		return nil, corrupt("layout %d (supported %d)", payload[0], layout)
	}
	form := int(payload[1])
	if form >= numForms {
		return nil, corrupt("unknown form %d", form)
	}
	if want := formFor(t.DType, form); want != form {
		return nil, corrupt("form %d for a %s tensor", form, t.DType)
	}
	chunk := int64(binary.LittleEndian.Uint32(payload[2:]))
	n := binary.LittleEndian.Uint64(payload[6:])
	if chunk != int64(chunkOf(form)) {
		return nil, corrupt("chunk of %d values (want %d)", chunk, chunkOf(form))
	}
	wantN := uint64(t.Elems())
	if form == FormBytes {
		wantN = uint64(size)
	}
	if n != wantN {
		return nil, corrupt("%d values for a tensor of %d", n, wantN)
	}
	if int64(len(payload)) < minLen(t.Elems()) {
		return nil, corrupt("payload of %d bytes for %d elements (at least %d)", len(payload), t.Elems(), minLen(t.Elems()))
	}
	w := width(form)
	nchunks := int((int64(n) + chunk - 1) / chunk)
	// Walk every plane header before allocating anything from n.
	x := &chunkIndex{form: form, chunk: int(chunk), n: int(n), w: w, size: size,
		planes: make([]plane, 0, min(nchunks*w, len(payload)/planeHead+1)),
		offs:   make([]int64, 0, min(nchunks, len(payload)/planeHead)+1)}
	off, released := headerSize, 0
	for k := range nchunks {
		x.offs = append(x.offs, int64(off))
		if release != nil && off-released >= releaseWindow {
			release(int64(released), int64(off-released))
			released = off
		}
		m := int(min(chunk, int64(n)-int64(k)*chunk))
		for range w {
			if len(payload)-off < planeHead {
				return nil, corrupt("chunk %d: truncated", k)
			}
			mode := payload[off]
			l := int64(binary.LittleEndian.Uint32(payload[off+1:]))
			off += planeHead
			if l > int64(len(payload)-off) {
				return nil, corrupt("chunk %d: plane of %d bytes past the payload's end", k, l)
			}
			switch {
			case mode == modeRaw && l == int64(m):
			case mode == modeConst && l == 1:
			case mode == modeHuff && form != FormBytes && l < int64(m):
			case mode == modeZstd && form == FormBytes && l < int64(m):
			default:
				return nil, corrupt("chunk %d: plane mode %d with %d bytes for %d values", k, mode, l, m)
			}
			x.planes = append(x.planes, plane{mode, payload[off : off+int(l)]})
			off += int(l)
		}
	}
	for _, b := range payload[off:] {
		if b != 0 {
			return nil, corrupt("non-zero byte after the last chunk")
		}
	}
	if len(payload) > off && int64(len(payload)) != minLen(t.Elems()) {
		return nil, corrupt("%d bytes of padding where %d make the payload's minimum length", len(payload)-off, minLen(t.Elems())-int64(off))
	}
	if len(x.offs) > 0 {
		x.offs[0] = 0
	}
	x.offs = append(x.offs, int64(len(payload)))
	if release != nil {
		release(int64(released), int64(len(payload)-released))
	}
	return x, nil
}

// releaseWindow is how much of a payload index reads before it releases it.
const releaseWindow = 16 << 20

// srcBytes returns the source bytes of chunks [k0, k1).
func (x *chunkIndex) srcBytes(k0, k1 int) (off, n int64) {
	per := x.size / int64(max(x.n, 1)) * int64(x.chunk)
	off = int64(k0) * per
	return off, min(int64(k1)*per, x.size) - off
}

// IndexChunks implements codec.ChunkDecoder.
func (*Codec) IndexChunks(payload []byte, t tensor.Info, version uint16, release func(off, n int64)) (codec.ChunkIndex, error) {
	return index(payload, t, version, release)
}

// Range implements codec.ChunkIndex.
func (x *chunkIndex) Range(k0, k1 int) (a, b int64) { return x.offs[k0], x.offs[k1] }

// DecodeChunks implements codec.ChunkIndex.
func (x *chunkIndex) DecodeChunks(dst []byte, k0, k1 int) error {
	if _, n := x.srcBytes(k0, k1); int64(len(dst)) != n || k0 < 0 || k1 > len(x.offs)-1 || k0 > k1 {
		return fmt.Errorf("lossless: chunks [%d, %d) of %d into %d bytes", k0, k1, len(x.offs)-1, len(dst))
	}
	base := k0 * x.chunk
	for k := k0; k < k1; k++ {
		v0 := k * x.chunk
		v1 := min(v0+x.chunk, x.n)
		if err := decodeChunk(dst, x.form, x.planes[k*x.w:(k+1)*x.w], v0-base, v1-base); err != nil {
			return fmt.Errorf("chunk %d: %w", k, err)
		}
	}
	return nil
}

// formFor returns form if it is valid for a tensor of dtype d, else -1.
func formFor(d tensor.DType, form int) int {
	switch d {
	case tensor.F16:
		if form == FormF16 {
			return form
		}
	case tensor.BF16:
		if form == FormBF16 {
			return form
		}
	case tensor.F64:
		if form == FormF64 {
			return form
		}
	case tensor.F32:
		if form == FormF32 || form == FormF32AsB16 || form == FormF32AsF16 {
			return form
		}
	default:
		if form == FormBytes {
			return form
		}
	}
	return -1
}

func decodeChunk(dst []byte, form int, ps []plane, v0, v1 int) error {
	m := v1 - v0
	if form == FormBytes {
		p := ps[0]
		out := dst[v0:v1]
		switch p.mode {
		case modeRaw:
			copy(out, p.data)
		case modeConst:
			for i := range out {
				out[i] = p.data[0]
			}
		case modeZstd:
			_, zdec, err := zstdCoders()
			if err != nil {
				return err
			}
			got, err := zdec.DecodeAll(p.data, out[:0:m])
			if err != nil {
				return corrupt("zstd: %v", err)
			}
			if len(got) != m {
				return corrupt("zstd frame of %d bytes (want %d)", len(got), m)
			}
		}
		return nil
	}
	s := pool.Get().(*scratch)
	defer pool.Put(s)
	w := width(form)
	var planes [8][]byte
	for k := range w {
		p := ps[k]
		switch p.mode {
		case modeRaw:
			planes[k] = p.data
		case modeConst:
			b := s.plane(k, m)
			for i := range b {
				b[i] = p.data[0]
			}
			planes[k] = b
		case modeHuff:
			hs, rest, err := huff0.ReadTable(p.data, &s.huff)
			if err != nil {
				return corrupt("huffman table: %v", err)
			}
			b, err := hs.Decoder().Decompress4X(s.plane(k, m)[:0:m], rest)
			if err != nil {
				return corrupt("huffman data: %v", err)
			}
			if len(b) != m {
				return corrupt("huffman plane of %d values (want %d)", len(b), m)
			}
			planes[k] = b
		}
	}
	switch {
	case form == FormF16 || form == FormBF16:
		join16(dst[2*v0:2*v1], planes[0][:m], planes[1][:m])
	case w == 2:
		p0, p1 := planes[0][:m], planes[1][:m]
		for i := range m {
			v := uint16(p0[i]) | uint16(p1[i])<<8
			store(form, dst, v0+i, uint64(bits.RotateLeft16(v, -1)))
		}
	default:
		for i := range m {
			var v uint64
			for k := range w {
				v |= uint64(planes[k][i]) << (8 * k)
			}
			store(form, dst, v0+i, rotr(v, w))
		}
	}
	return nil
}

// split16 rotates each 16-bit value of b left by one bit and writes its
// low and high bytes to p0 and p1 (len(b) == 2·len(p0) == 2·len(p1)),
// four values at a time.
func split16(p0, p1, b []byte) {
	m := len(p0)
	p1 = p1[:m]
	b = b[:2*m]
	i := 0
	for ; i+4 <= m; i += 4 {
		v := binary.LittleEndian.Uint64(b[2*i:])
		// Rotate each 16-bit lane left by one.
		r := (v<<1)&0xfffefffefffefffe | (v>>15)&0x0001000100010001
		p0[i], p1[i] = byte(r), byte(r>>8)
		p0[i+1], p1[i+1] = byte(r>>16), byte(r>>24)
		p0[i+2], p1[i+2] = byte(r>>32), byte(r>>40)
		p0[i+3], p1[i+3] = byte(r>>48), byte(r>>56)
	}
	for ; i < m; i++ {
		r := bits.RotateLeft16(uint16(b[2*i])|uint16(b[2*i+1])<<8, 1)
		p0[i], p1[i] = byte(r), byte(r>>8)
	}
}

// join16 undoes split16.
func join16(b, p0, p1 []byte) {
	m := len(p0)
	p1 = p1[:m]
	b = b[:2*m]
	i := 0
	for ; i+4 <= m; i += 4 {
		r := uint64(p0[i]) | uint64(p1[i])<<8 | uint64(p0[i+1])<<16 | uint64(p1[i+1])<<24 |
			uint64(p0[i+2])<<32 | uint64(p1[i+2])<<40 | uint64(p0[i+3])<<48 | uint64(p1[i+3])<<56
		// Rotate each 16-bit lane right by one.
		v := (r>>1)&0x7fff7fff7fff7fff | (r<<15)&0x8000800080008000
		binary.LittleEndian.PutUint64(b[2*i:], v)
	}
	for ; i < m; i++ {
		v := bits.RotateLeft16(uint16(p0[i])|uint16(p1[i])<<8, -1)
		b[2*i], b[2*i+1] = byte(v), byte(v>>8)
	}
}
