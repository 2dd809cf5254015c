// Package intq implements the scalar quantization baselines "int8"
// (per-row symmetric INT8) and "int4" (grouped asymmetric INT4). Both
// register themselves with package codec on import. Their payloads are
// specified in formats/tpk/CODECS.md.
//
// A tensor is viewed as a matrix (tensor.Info.Matrix): the last dimension
// is the columns, all others are folded into rows.
package intq

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/codec/internal/par"
	"github.com/tpconvert/tpconvert/codec/internal/q4"
	"github.com/tpconvert/tpconvert/tensor"
)

// Payload layout versions written in the first byte of each payload; they
// equal the codecs' record versions.
const (
	Int8Version = 1
	Int4Version = 1
)

// Header sizes in bytes.
const (
	Int8HeaderSize = 9  // u8 version, u32 rows, u32 cols
	Int4HeaderSize = 13 // u8 version, u32 rows, u32 cols, u32 group
)

// DefaultGroupSize is the int4 group size when Options.GroupSize is 0.
const DefaultGroupSize = 32

func init() {
	codec.Register(codec.IDInt8, "int8", "per-row symmetric INT8 with an FP16 scale per row (~8 bits/weight)", NewInt8)
	codec.Register(codec.IDInt4, "int4", "grouped asymmetric INT4, FP16 scale and offset per group of 32 (~5 bits/weight)", NewInt4)
}

// Int8 is the "int8" codec: each row r has an FP16 scale s_r =
// fp16(max|x_r|/127) and each weight is stored as the signed byte
// q = clamp(round(x/s_r), −127, 127); it decodes to q·s_r.
type Int8 struct {
	workers int // goroutines per tensor; 0 = GOMAXPROCS
}

// NewInt8 returns the int8 codec. It takes no rank or group size;
// o.Workers is the number of goroutines per tensor (default GOMAXPROCS).
func NewInt8(o codec.Options) (codec.Codec, error) {
	if err := o.Only("int8", 0); err != nil {
		return nil, err
	}
	return Int8{workers: o.Workers}, nil
}

// ID returns codec.IDInt8.
func (Int8) ID() uint16 { return codec.IDInt8 }

// Name returns "int8".
func (Int8) Name() string { return "int8" }

// Version returns the payload version, Int8Version.
func (Int8) Version() uint16 { return Int8Version }

// Params returns "scale=row".
func (Int8) Params() string { return "scale=row" }

// Cost returns the size of the payload buffer, the only working memory.
func (Int8) Cost(t tensor.Info) int64 {
	n := t.Elems()
	rows, _ := t.Matrix()
	return Int8HeaderSize + 2*max(rows, 0) + n
}

// Int8Size returns the payload size of a rows×cols matrix,
// 9 + 2·rows + rows·cols bytes.
func Int8Size(rows, cols int) (int, error) {
	n, ok := q4.Mul(rows, cols)
	if !ok || int64(n) > tensor.MaxElems {
		return 0, fmt.Errorf("intq: %d×%d matrix is too large", rows, cols)
	}
	return Int8HeaderSize + 2*rows + n, nil
}

// Encode writes the int8 payload of t.
func (c Int8) Encode(w io.Writer, t tensor.Info, x []float32) error {
	rows, cols, err := matrix("int8", t, len(x))
	if err != nil {
		return err
	}
	if err := checkFinite("int8", t, x); err != nil {
		return err
	}
	size, err := Int8Size(rows, cols)
	if err != nil {
		return err
	}
	buf := make([]byte, size)
	putHeader(buf, Int8Version, rows, cols)
	scales := buf[Int8HeaderSize : Int8HeaderSize+2*rows]
	codes := buf[Int8HeaderSize+2*rows:]
	err = par.For(rows, 1, max(1, (1<<16)/max(cols, 1)), codec.Options{Workers: c.workers}.PerTensor(), func(r0, r1 int) error {
		for r := r0; r < r1; r++ {
			row := x[r*cols : (r+1)*cols]
			var m float32
			for _, v := range row {
				m = max(m, float32(math.Abs(float64(v))))
			}
			h := tensor.FloatToHalf(m / 127)
			s := tensor.HalfToFloat(h)
			if math.IsInf(float64(s), 0) {
				return fmt.Errorf("%w: int8: tensor %q: row %d: max |x| = %g exceeds the FP16 range of scales", codec.ErrUnsupported, t.Name, r, m)
			}
			binary.LittleEndian.PutUint16(scales[2*r:], h)
			var inv float32
			if s > 0 {
				inv = 1 / s
			}
			out := codes[r*cols : (r+1)*cols]
			for c, v := range row {
				q := float32(math.Round(float64(v * inv)))
				q = min(max(q, -127), 127)
				out[c] = byte(int8(q))
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	_, err = w.Write(buf)
	return err
}

// MaxRelErr implements codec.ErrorBounder: 127 levels per row give a
// relative error near 0.005 on weights; a row whose values mostly fall
// below half a step is better stored unchanged.
func (Int8) MaxRelErr(tensor.Info) float64 { return 0.05 }

// Decode reconstructs t from an int8 payload.
func (Int8) Decode(dst []float32, payload []byte, t tensor.Info, version uint16) error {
	rows, cols, err := decodeHeader("int8", payload, t, len(dst), version, Int8Version, Int8HeaderSize)
	if err != nil {
		return err
	}
	return decodeInt8(dst, payload, t, rows, cols, 0, rows)
}

// DecodeRows implements codec.RowDecoder.
func (Int8) DecodeRows(dst []float32, payload []byte, t tensor.Info, version uint16, r0, r1 int64) error {
	rows, cols, err := rowsHeader("int8", dst, payload, t, version, Int8Version, Int8HeaderSize, r0, r1)
	if err != nil {
		return err
	}
	return decodeInt8(dst, payload, t, rows, cols, int(r0), int(r1))
}

// decodeInt8 decodes rows [r0, r1) of a rows×cols int8 payload into dst.
func decodeInt8(dst []float32, payload []byte, t tensor.Info, rows, cols, r0, r1 int) error {
	size, err := Int8Size(rows, cols)
	if err != nil || size != len(payload) {
		return fmt.Errorf("%w: int8: tensor %q: payload is %d bytes, want %d", codec.ErrCorrupt, t.Name, len(payload), size)
	}
	scales := payload[Int8HeaderSize : Int8HeaderSize+2*rows]
	codes := payload[Int8HeaderSize+2*rows:]
	for r := r0; r < r1; r++ {
		s := tensor.HalfToFloat(binary.LittleEndian.Uint16(scales[2*r:]))
		if !finite(s) {
			return fmt.Errorf("%w: int8: tensor %q: row %d scale is %v", codec.ErrCorrupt, t.Name, r, s)
		}
		out := dst[(r-r0)*cols : (r-r0+1)*cols]
		for c, b := range codes[r*cols : (r+1)*cols] {
			out[c] = float32(int8(b)) * s
		}
	}
	return nil
}

// Int4 is the "int4" codec: asymmetric min/max quantization to 4 bits in
// groups of GroupSize consecutive weights of a row, with an FP16 scale and
// offset per group (package-internal q4 layout, shared with tenpak_x_v1).
type Int4 struct {
	group   int
	workers int // goroutines per tensor; 0 = GOMAXPROCS
}

// NewInt4 returns the int4 codec. o.GroupSize is the number of weights per
// group (default 32, at most 2^32−1); a group never straddles rows.
// o.Workers is the number of goroutines per tensor (default GOMAXPROCS).
// It takes no rank.
func NewInt4(o codec.Options) (codec.Codec, error) {
	if err := o.Only("int4", codec.TakesGroupSize); err != nil {
		return nil, err
	}
	g := o.GroupSize
	if g == 0 {
		g = DefaultGroupSize
	}
	if g < 0 || g > math.MaxUint32 {
		return nil, fmt.Errorf("int4: group size %d out of range [1, %d]", o.GroupSize, uint32(math.MaxUint32))
	}
	return Int4{group: g, workers: o.Workers}, nil
}

// ID returns codec.IDInt4.
func (Int4) ID() uint16 { return codec.IDInt4 }

// Name returns "int4".
func (Int4) Name() string { return "int4" }

// Version returns the payload version, Int4Version.
func (Int4) Version() uint16 { return Int4Version }

// Params returns "group=N".
func (c Int4) Params() string { return fmt.Sprintf("group=%d", c.group) }

// Cost returns the working memory of Encode: the payload buffer and the
// scales and offsets before they are written into it.
func (c Int4) Cost(t tensor.Info) int64 {
	rows, cols := t.Matrix()
	size, err := Int4Size(int(rows), int(cols), c.group)
	if err != nil {
		return 0
	}
	_, groups, _ := q4.Layout{Rows: int(rows), Cols: int(cols), Group: c.group}.Sizes()
	return int64(size) + 4*int64(groups)
}

// Int4Size returns the payload size of a rows×cols matrix in groups of
// group weights: 13 + ceil(rows·cols/2) + 4·rows·ceil(cols/group) bytes
// (a group of 0, or ≥ cols, is one row).
func Int4Size(rows, cols, group int) (int, error) {
	n, err := q4.Layout{Rows: rows, Cols: cols, Group: group}.SectionSize()
	if err != nil {
		return 0, fmt.Errorf("intq: %w", err)
	}
	return Int4HeaderSize + n, nil
}

// Encode writes the int4 payload of t.
func (c Int4) Encode(w io.Writer, t tensor.Info, x []float32) error {
	rows, cols, err := matrix("int4", t, len(x))
	if err != nil {
		return err
	}
	if err := checkFinite("int4", t, x); err != nil {
		return err
	}
	l := q4.Layout{Rows: rows, Cols: cols, Group: c.group}
	size, err := Int4Size(rows, cols, c.group)
	if err != nil {
		return err
	}
	buf := make([]byte, size)
	putHeader(buf, Int4Version, rows, cols)
	binary.LittleEndian.PutUint32(buf[9:], uint32(c.group))
	if err := q4.Encode(buf[Int4HeaderSize:], x, l, codec.Options{Workers: c.workers}.PerTensor()); err != nil {
		return fmt.Errorf("%w: int4: tensor %q: %v", codec.ErrUnsupported, t.Name, err)
	}
	_, err = w.Write(buf)
	return err
}

// MaxRelErr implements codec.ErrorBounder: 16 levels per group give a
// relative error near 0.1 on weights.
func (Int4) MaxRelErr(tensor.Info) float64 { return 0.25 }

// Decode reconstructs t from an int4 payload.
func (c Int4) Decode(dst []float32, payload []byte, t tensor.Info, version uint16) error {
	rows, cols, err := decodeHeader("int4", payload, t, len(dst), version, Int4Version, Int4HeaderSize)
	if err != nil {
		return err
	}
	return decodeInt4(dst, payload, t, rows, cols, 0, rows, c.workers)
}

// DecodeRows implements codec.RowDecoder.
func (Int4) DecodeRows(dst []float32, payload []byte, t tensor.Info, version uint16, r0, r1 int64) error {
	rows, cols, err := rowsHeader("int4", dst, payload, t, version, Int4Version, Int4HeaderSize, r0, r1)
	if err != nil {
		return err
	}
	return decodeInt4(dst, payload, t, rows, cols, int(r0), int(r1), 0)
}

// decodeInt4 decodes rows [r0, r1) of a rows×cols int4 payload into dst,
// all of them with the parallel whole-matrix decoder (workers goroutines;
// 0: GOMAXPROCS).
func decodeInt4(dst []float32, payload []byte, t tensor.Info, rows, cols, r0, r1, workers int) error {
	group := binary.LittleEndian.Uint32(payload[9:])
	if group == 0 {
		return fmt.Errorf("%w: int4: tensor %q: group size 0", codec.ErrCorrupt, t.Name)
	}
	size, err := Int4Size(rows, cols, int(group))
	if err != nil || size != len(payload) {
		return fmt.Errorf("%w: int4: tensor %q: payload is %d bytes, want %d", codec.ErrCorrupt, t.Name, len(payload), size)
	}
	l := q4.Layout{Rows: rows, Cols: cols, Group: int(group)}
	if r0 == 0 && r1 == rows {
		err = q4.Decode(dst, payload[Int4HeaderSize:], l, false, codec.Options{Workers: workers}.PerTensor())
	} else {
		err = q4.DecodeRows(dst, payload[Int4HeaderSize:], l, r0, r1)
	}
	if err != nil {
		return fmt.Errorf("%w: int4: tensor %q: %v", codec.ErrCorrupt, t.Name, err)
	}
	return nil
}

func putHeader(b []byte, version byte, rows, cols int) {
	b[0] = version
	binary.LittleEndian.PutUint32(b[1:], uint32(rows))
	binary.LittleEndian.PutUint32(b[5:], uint32(cols))
}

// matrix returns t's matrix view for encoding, refusing shapes that the
// payload header cannot describe.
func matrix(name string, t tensor.Info, n int) (rows, cols int, err error) {
	elems, err := tensor.NumElems(t.Shape)
	if err != nil {
		return 0, 0, fmt.Errorf("%s: tensor %q: %w", name, t.Name, err)
	}
	if elems != int64(n) {
		return 0, 0, fmt.Errorf("%s: tensor %q has %d elements, got %d values", name, t.Name, elems, n)
	}
	r, c := t.Matrix()
	if r > math.MaxUint32 || c > math.MaxUint32 {
		return 0, 0, fmt.Errorf("%w: %s: tensor %q: %d×%d matrix has a dimension above 2^32−1", codec.ErrUnsupported, name, t.Name, r, c)
	}
	return int(r), int(c), nil
}

func checkFinite(name string, t tensor.Info, x []float32) error {
	for i, v := range x {
		if !finite(v) {
			return fmt.Errorf("%w: %s: tensor %q: element %d is %v", codec.ErrUnsupported, name, t.Name, i, v)
		}
	}
	return nil
}

func finite(v float32) bool { return v-v == 0 }

// decodeHeader checks the record version, the header and that t and dst
// agree with it, and returns the matrix dimensions.
func decodeHeader(name string, p []byte, t tensor.Info, n int, version, want uint16, hdr int) (rows, cols int, err error) {
	if version == 0 || version > want {
		return 0, 0, fmt.Errorf("%w: %s: tensor %q: unsupported payload version %d (supported 1-%d)", codec.ErrCorrupt, name, t.Name, version, want)
	}
	if len(p) < hdr {
		return 0, 0, fmt.Errorf("%w: %s: tensor %q: payload of %d bytes is shorter than its %d-byte header", codec.ErrCorrupt, name, t.Name, len(p), hdr)
	}
	if uint16(p[0]) == 0 || uint16(p[0]) > want {
		return 0, 0, fmt.Errorf("%w: %s: tensor %q: unsupported layout version %d (supported 1-%d)", codec.ErrCorrupt, name, t.Name, p[0], want)
	}
	elems, err := tensor.NumElems(t.Shape)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %s: tensor %q: %v", codec.ErrCorrupt, name, t.Name, err)
	}
	if elems != int64(n) {
		return 0, 0, fmt.Errorf("%w: %s: tensor %q has %d elements, destination holds %d", codec.ErrCorrupt, name, t.Name, elems, n)
	}
	r, c := t.Matrix()
	hr, hc := int64(binary.LittleEndian.Uint32(p[1:])), int64(binary.LittleEndian.Uint32(p[5:]))
	if hr != r || hc != c {
		return 0, 0, fmt.Errorf("%w: %s: tensor %q: payload is for a %d×%d matrix, tensor is %d×%d", codec.ErrCorrupt, name, t.Name, hr, hc, r, c)
	}
	return int(r), int(c), nil
}

// rowsHeader is decodeHeader for DecodeRows: dst holds rows [r0, r1).
func rowsHeader(name string, dst []float32, p []byte, t tensor.Info, version, want uint16, hdr int, r0, r1 int64) (rows, cols int, err error) {
	elems, err := tensor.NumElems(t.Shape)
	if err != nil || elems > math.MaxInt {
		return 0, 0, fmt.Errorf("%w: %s: tensor %q: shape %v", codec.ErrCorrupt, name, t.Name, t.Shape)
	}
	rows, cols, err = decodeHeader(name, p, t, int(elems), version, want, hdr)
	if err != nil {
		return 0, 0, err
	}
	if r0 < 0 || r0 > r1 || r1 > int64(rows) || int64(len(dst)) != (r1-r0)*int64(cols) {
		return 0, 0, fmt.Errorf("%s: tensor %q: rows [%d, %d) of %d into %d values", name, t.Name, r0, r1, rows, len(dst))
	}
	return rows, cols, nil
}
