// Package tensor describes tensors as the containers store them: a name, an
// element type (DType) and a shape, and converts between element types and
// float32.
//
// Shapes are row-major with the outermost dimension first, as in safetensors
// and PyTorch. A weight matrix of a linear layer has Shape = [rows, cols] =
// [output features, input features]. GGUF stores dimensions innermost first
// (ne[0] is the number of columns); formats/gguf reverses them on read and
// write, so every package above the formats sees one convention.
package tensor

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
)

// DType is an element type. Its numeric value is stable and is written to
// .tpk files; values are only ever added.
//
// Values below 0x100 are plain element types (one element per "block").
// Values 0x100+k are ggml's block-quantized type k (ggml_type enum, as in
// ggml.h and the GGUF specification), used for tensors read from GGUF files.
type DType uint16

// Plain element types, as named by the safetensors format.
const (
	Invalid DType = 0
	F64     DType = 1
	F32     DType = 2
	F16     DType = 3
	BF16    DType = 4
	I8      DType = 5
	I16     DType = 6
	I32     DType = 7
	I64     DType = 8
	U8      DType = 9
	U16     DType = 10
	U32     DType = 11
	U64     DType = 12
	Bool    DType = 13
	F8E4M3  DType = 14 // opaque: carried bit-exact, never decoded
	F8E5M2  DType = 15 // opaque: carried bit-exact, never decoded
	F8E8M0  DType = 16 // opaque: carried bit-exact, never decoded
)

// GGMLBase is added to a ggml_type value to form its DType.
const GGMLBase DType = 0x100

// ggml block-quantized types (ggml_type values from ggml.h, GGUF spec v3).
const (
	Q4_0    = GGMLBase + 2
	Q4_1    = GGMLBase + 3
	Q5_0    = GGMLBase + 6
	Q5_1    = GGMLBase + 7
	Q8_0    = GGMLBase + 8
	Q8_1    = GGMLBase + 9
	Q2_K    = GGMLBase + 10
	Q3_K    = GGMLBase + 11
	Q4_K    = GGMLBase + 12
	Q5_K    = GGMLBase + 13
	Q6_K    = GGMLBase + 14
	Q8_K    = GGMLBase + 15
	IQ2_XXS = GGMLBase + 16
	IQ2_XS  = GGMLBase + 17
	IQ3_XXS = GGMLBase + 18
	IQ1_S   = GGMLBase + 19
	IQ4_NL  = GGMLBase + 20
	IQ3_S   = GGMLBase + 21
	IQ2_S   = GGMLBase + 22
	IQ4_XS  = GGMLBase + 23
	IQ1_M   = GGMLBase + 29
	TQ1_0   = GGMLBase + 34
	TQ2_0   = GGMLBase + 35
	MXFP4   = GGMLBase + 39
)

type dtypeInfo struct {
	name       string
	blockElems int64 // elements per block
	blockBytes int64 // bytes per block
	float      bool  // decodable float type (F64/F32/F16/BF16)
}

var dtypes = map[DType]dtypeInfo{
	F64:    {"F64", 1, 8, true},
	F32:    {"F32", 1, 4, true},
	F16:    {"F16", 1, 2, true},
	BF16:   {"BF16", 1, 2, true},
	I8:     {"I8", 1, 1, false},
	I16:    {"I16", 1, 2, false},
	I32:    {"I32", 1, 4, false},
	I64:    {"I64", 1, 8, false},
	U8:     {"U8", 1, 1, false},
	U16:    {"U16", 1, 2, false},
	U32:    {"U32", 1, 4, false},
	U64:    {"U64", 1, 8, false},
	Bool:   {"BOOL", 1, 1, false},
	F8E4M3: {"F8_E4M3", 1, 1, false},
	F8E5M2: {"F8_E5M2", 1, 1, false},
	F8E8M0: {"F8_E8M0", 1, 1, false},

	Q4_0:    {"Q4_0", 32, 18, false},
	Q4_1:    {"Q4_1", 32, 20, false},
	Q5_0:    {"Q5_0", 32, 22, false},
	Q5_1:    {"Q5_1", 32, 24, false},
	Q8_0:    {"Q8_0", 32, 34, false},
	Q8_1:    {"Q8_1", 32, 36, false},
	Q2_K:    {"Q2_K", 256, 84, false},
	Q3_K:    {"Q3_K", 256, 110, false},
	Q4_K:    {"Q4_K", 256, 144, false},
	Q5_K:    {"Q5_K", 256, 176, false},
	Q6_K:    {"Q6_K", 256, 210, false},
	Q8_K:    {"Q8_K", 256, 292, false},
	IQ2_XXS: {"IQ2_XXS", 256, 66, false},
	IQ2_XS:  {"IQ2_XS", 256, 74, false},
	IQ3_XXS: {"IQ3_XXS", 256, 98, false},
	IQ1_S:   {"IQ1_S", 256, 50, false},
	IQ4_NL:  {"IQ4_NL", 32, 18, false},
	IQ3_S:   {"IQ3_S", 256, 110, false},
	IQ2_S:   {"IQ2_S", 256, 82, false},
	IQ4_XS:  {"IQ4_XS", 256, 136, false},
	IQ1_M:   {"IQ1_M", 256, 56, false},
	TQ1_0:   {"TQ1_0", 256, 54, false},
	TQ2_0:   {"TQ2_0", 256, 66, false},
	MXFP4:   {"MXFP4", 32, 17, false},
}

var byName = func() map[string]DType {
	m := make(map[string]DType, len(dtypes))
	for d, i := range dtypes {
		m[i.name] = d
	}
	return m
}()

// ErrUnknownDType is returned for a dtype name or code tpconvert does not know.
var ErrUnknownDType = errors.New("tensor: unknown dtype")

// ParseDType returns the DType with the given name ("F32", "BF16", "Q4_K").
func ParseDType(name string) (DType, error) {
	if d, ok := byName[name]; ok {
		return d, nil
	}
	return Invalid, fmt.Errorf("%w %q", ErrUnknownDType, name)
}

// Known reports whether d is a DType this package describes.
func (d DType) Known() bool { _, ok := dtypes[d]; return ok }

// String returns the dtype's name as safetensors or ggml spells it.
func (d DType) String() string {
	if i, ok := dtypes[d]; ok {
		return i.name
	}
	return fmt.Sprintf("DType(%d)", uint16(d))
}

// IsFloat reports whether d is F64, F32, F16 or BF16.
func (d DType) IsFloat() bool { return dtypes[d].float }

// IsQuantized reports whether d is a ggml block-quantized type.
func (d DType) IsQuantized() bool { return d >= GGMLBase && d.Known() }

// GGMLType returns the ggml_type value for d, and whether d has one.
func (d DType) GGMLType() (uint32, bool) {
	switch d {
	case F32:
		return 0, true
	case F16:
		return 1, true
	case I8:
		return 24, true
	case I16:
		return 25, true
	case I32:
		return 26, true
	case I64:
		return 27, true
	case F64:
		return 28, true
	case BF16:
		return 30, true
	}
	if d.IsQuantized() {
		return uint32(d - GGMLBase), true
	}
	return 0, false
}

// FromGGMLType returns the DType for a ggml_type value.
func FromGGMLType(t uint32) (DType, error) {
	switch t {
	case 0:
		return F32, nil
	case 1:
		return F16, nil
	case 24:
		return I8, nil
	case 25:
		return I16, nil
	case 26:
		return I32, nil
	case 27:
		return I64, nil
	case 28:
		return F64, nil
	case 30:
		return BF16, nil
	}
	if t < 0x100 {
		d := GGMLBase + DType(t)
		if d.Known() {
			return d, nil
		}
	}
	return Invalid, fmt.Errorf("%w: ggml type %d", ErrUnknownDType, t)
}

// BlockElems is the number of elements in one storage block (1 for plain types).
func (d DType) BlockElems() int64 { return dtypes[d].blockElems }

// BlockBytes is the byte size of one storage block.
func (d DType) BlockBytes() int64 { return dtypes[d].blockBytes }

// ErrShape is returned for shapes that are negative, overflow, or do not fit
// the dtype's block size.
var ErrShape = errors.New("tensor: invalid shape")

// MaxElems caps the element count of a single tensor (2^48).
const MaxElems = int64(1) << 48

// NumElems returns the product of shape, checking for negative dimensions and
// overflow. A scalar (empty shape) has one element.
func NumElems(shape []int64) (int64, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("%w: negative dimension %d", ErrShape, d)
		}
		hi, lo := bits.Mul64(uint64(n), uint64(d))
		if hi != 0 || lo > uint64(MaxElems) {
			return 0, fmt.Errorf("%w: %v has more than 2^48 elements", ErrShape, shape)
		}
		n = int64(lo)
	}
	return n, nil
}

// ByteSize returns the storage size of a tensor of dtype d and the given
// shape, checking overflow and that the innermost dimension is a whole number
// of blocks.
func ByteSize(d DType, shape []int64) (int64, error) {
	info, ok := dtypes[d]
	if !ok {
		return 0, fmt.Errorf("%w: code %d", ErrUnknownDType, uint16(d))
	}
	n, err := NumElems(shape)
	if err != nil {
		return 0, err
	}
	if info.blockElems > 1 {
		inner := int64(1)
		if len(shape) > 0 {
			inner = shape[len(shape)-1]
		}
		if inner%info.blockElems != 0 {
			return 0, fmt.Errorf("%w: %s needs rows of a multiple of %d elements, shape %v", ErrShape, d, info.blockElems, shape)
		}
	}
	return n / info.blockElems * info.blockBytes, nil
}

// Info describes one tensor of a source or a .tpk file.
type Info struct {
	Name  string
	DType DType
	Shape []int64
	// Offset and Size locate the tensor's bytes in its source file (or, for
	// a .tpk, its payload); File indexes Meta.Files for sharded sources.
	Offset int64
	Size   int64
	File   int
}

// Elems returns the number of elements (0 if the shape is invalid).
func (t Info) Elems() int64 {
	n, err := NumElems(t.Shape)
	if err != nil {
		return 0
	}
	return n
}

// Matrix returns rows and cols when the tensor is viewed as a matrix: the
// last dimension is the columns and all others are folded into rows. A 1-D
// tensor is one row.
func (t Info) Matrix() (rows, cols int64) {
	if len(t.Shape) == 0 {
		return 1, 1
	}
	cols = t.Shape[len(t.Shape)-1]
	rows = 1
	for _, d := range t.Shape[:len(t.Shape)-1] {
		rows *= d
	}
	return rows, cols
}

// Clone returns a deep copy of t.
func (t Info) Clone() Info {
	t.Shape = append([]int64(nil), t.Shape...)
	return t
}

// Dequantizer decodes n elements of a block-quantized dtype from src into dst.
type Dequantizer func(dst []float32, src []byte) error

var dequantizers = map[DType]Dequantizer{}

// RegisterDequantizer makes ToFloat32 able to decode d. formats/gguf
// registers the ggml block types in its init function.
func RegisterDequantizer(d DType, f Dequantizer) { dequantizers[d] = f }

// CanDecode reports whether ToFloat32 can decode d.
func CanDecode(d DType) bool {
	if d.IsFloat() {
		return true
	}
	_, ok := dequantizers[d]
	return ok
}

// ErrNotDecodable is returned when a dtype cannot be converted to float32.
var ErrNotDecodable = errors.New("tensor: dtype cannot be decoded to float32")

// ToFloat32 decodes src, holding len(dst) elements of dtype d, into dst.
func ToFloat32(dst []float32, d DType, src []byte) error {
	info, ok := dtypes[d]
	if !ok {
		return fmt.Errorf("%w: code %d", ErrUnknownDType, uint16(d))
	}
	n := int64(len(dst))
	if n%info.blockElems != 0 {
		return fmt.Errorf("%w: %d elements is not a whole number of %s blocks", ErrShape, n, d)
	}
	if want := n / info.blockElems * info.blockBytes; int64(len(src)) != want {
		return fmt.Errorf("%w: %d bytes of %s for %d elements (want %d)", ErrShape, len(src), d, n, want)
	}
	switch d {
	case F32:
		for i := range dst {
			dst[i] = math.Float32frombits(le32(src[4*i:]))
		}
	case F16:
		for i := range dst {
			dst[i] = HalfToFloat(uint16(src[2*i]) | uint16(src[2*i+1])<<8)
		}
	case BF16:
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(uint16(src[2*i])|uint16(src[2*i+1])<<8) << 16)
		}
	case F64:
		for i := range dst {
			dst[i] = float32(math.Float64frombits(uint64(le32(src[8*i:])) | uint64(le32(src[8*i+4:]))<<32))
		}
	default:
		f, ok := dequantizers[d]
		if !ok {
			return fmt.Errorf("%w: %s", ErrNotDecodable, d)
		}
		return f(dst, src)
	}
	return nil
}

// FromFloat32 encodes src into dst as dtype d, which must be F64, F32, F16
// or BF16 (rounding to nearest even). dst must hold exactly len(src) elements.
func FromFloat32(dst []byte, d DType, src []float32) error {
	if !d.IsFloat() {
		return fmt.Errorf("%w: cannot encode %s", ErrNotDecodable, d)
	}
	if int64(len(dst)) != int64(len(src))*d.BlockBytes() {
		return fmt.Errorf("%w: %d bytes for %d %s elements", ErrShape, len(dst), len(src), d)
	}
	switch d {
	case F32:
		for i, v := range src {
			put32(dst[4*i:], math.Float32bits(v))
		}
	case F16:
		for i, v := range src {
			h := FloatToHalf(v)
			dst[2*i], dst[2*i+1] = byte(h), byte(h>>8)
		}
	case BF16:
		for i, v := range src {
			h := FloatToBF16(v)
			dst[2*i], dst[2*i+1] = byte(h), byte(h>>8)
		}
	case F64:
		for i, v := range src {
			b := math.Float64bits(float64(v))
			put32(dst[8*i:], uint32(b))
			put32(dst[8*i+4:], uint32(b>>32))
		}
	}
	return nil
}

func le32(b []byte) uint32 {
	_ = b[3]
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func put32(b []byte, v uint32) {
	_ = b[3]
	b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
}
