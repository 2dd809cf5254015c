package gguf

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"

	"github.com/tpconvert/tpconvert/formats"
)

// Limits on sizes read from a file. See the package documentation.
const (
	// MaxCount caps kv_count and tensor_count (1<<20).
	MaxCount = 1 << 20
	// MaxKeyLen caps the length of keys and tensor names in bytes (2^16-1,
	// the GGUF specification's limit for keys).
	MaxKeyLen = 1<<16 - 1
	// MaxStringLen caps the length of a string value in bytes (16 MiB).
	MaxStringLen = 16 << 20
	// MaxArrayLen caps the number of elements of one array (1<<26).
	MaxArrayLen = 1 << 26
	// MaxDepth caps the nesting of arrays: an array of scalars has depth 1.
	MaxDepth = 8
	// MaxDims is the largest n_dims of a tensor (ggml's GGML_MAX_DIMS).
	MaxDims = 4
	// DefaultAlignment is the alignment of files without general.alignment.
	DefaultAlignment = 32
)

// AlignmentKey is the metadata key that sets the data alignment.
const AlignmentKey = "general.alignment"

// ValueType is a GGUF metadata value type (gguf_type in the specification).
type ValueType uint32

// Metadata value types, as numbered by the GGUF specification.
const (
	TypeUint8   ValueType = 0
	TypeInt8    ValueType = 1
	TypeUint16  ValueType = 2
	TypeInt16   ValueType = 3
	TypeUint32  ValueType = 4
	TypeInt32   ValueType = 5
	TypeFloat32 ValueType = 6
	TypeBool    ValueType = 7
	TypeString  ValueType = 8
	TypeArray   ValueType = 9
	TypeUint64  ValueType = 10
	TypeInt64   ValueType = 11
	TypeFloat64 ValueType = 12
)

var typeNames = [...]string{"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array", "uint64", "int64", "float64"}

// String returns the type's name as the specification spells it in
// lower case ("uint32", "array").
func (t ValueType) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("ValueType(%d)", uint32(t))
}

// size returns the encoded size of a fixed-size type, 0 for string and array.
func (t ValueType) size() int {
	switch t {
	case TypeUint8, TypeInt8, TypeBool:
		return 1
	case TypeUint16, TypeInt16:
		return 2
	case TypeUint32, TypeInt32, TypeFloat32:
		return 4
	case TypeUint64, TypeInt64, TypeFloat64:
		return 8
	}
	return 0
}

// minSize returns the fewest bytes a value of type t occupies, 0 if t is not
// a valid type.
func (t ValueType) minSize() int {
	switch t {
	case TypeString:
		return 8 // length
	case TypeArray:
		return 12 // element type and count
	}
	return t.size()
}

// KV is one metadata key/value pair.
//
// Value holds, by Type: uint8, int8, uint16, int16, uint32, int32, float32,
// bool, string, uint64, int64, float64, or an Array.
type KV struct {
	Key   string
	Type  ValueType
	Value any
}

// Array is an array value. Values is a slice of the element type's Go type
// ([]uint8, []int8, []uint16, []int16, []uint32, []int32, []float32,
// []bool, []string, []uint64, []int64, []float64), or []Array when Elem is
// TypeArray.
type Array struct {
	Elem   ValueType
	Values any
}

// Len returns the number of elements.
func (a Array) Len() int {
	switch v := a.Values.(type) {
	case []uint8:
		return len(v)
	case []int8:
		return len(v)
	case []uint16:
		return len(v)
	case []int16:
		return len(v)
	case []uint32:
		return len(v)
	case []int32:
		return len(v)
	case []float32:
		return len(v)
	case []bool:
		return len(v)
	case []string:
		return len(v)
	case []uint64:
		return len(v)
	case []int64:
		return len(v)
	case []float64:
		return len(v)
	case []Array:
		return len(v)
	}
	return 0
}

// Metadata is a file's key/value pairs in file order.
type Metadata []KV

// Get returns the pair with the given key.
func (m Metadata) Get(key string) (KV, bool) {
	for _, kv := range m {
		if kv.Key == key {
			return kv, true
		}
	}
	return KV{}, false
}

// String returns the value of a string-typed key.
func (m Metadata) String(key string) (string, bool) {
	kv, ok := m.Get(key)
	if !ok {
		return "", false
	}
	s, ok := kv.Value.(string)
	return s, ok
}

// Uint returns the value of an integer-typed key as uint64; it reports
// false for missing keys, other types and negative values.
func (m Metadata) Uint(key string) (uint64, bool) {
	kv, ok := m.Get(key)
	if !ok {
		return 0, false
	}
	switch v := kv.Value.(type) {
	case uint8:
		return uint64(v), true
	case uint16:
		return uint64(v), true
	case uint32:
		return uint64(v), true
	case uint64:
		return v, true
	case int8:
		return uint64(v), v >= 0
	case int16:
		return uint64(v), v >= 0
	case int32:
		return uint64(v), v >= 0
	case int64:
		return uint64(v), v >= 0
	}
	return 0, false
}

// Display limits of KV.String.
const (
	displayElems = 8
	displayChars = 120
)

// String formats the pair for display as "key (type) = value", showing at
// most 8 elements of an array and 120 bytes of a string.
func (kv KV) String() string {
	var b strings.Builder
	b.WriteString(kv.Key)
	b.WriteString(" (")
	if a, ok := kv.Value.(Array); ok {
		writeArrayType(&b, a)
	} else {
		b.WriteString(kv.Type.String())
	}
	b.WriteString(") = ")
	writeValue(&b, kv.Value)
	return b.String()
}

func writeArrayType(b *strings.Builder, a Array) {
	fmt.Fprintf(b, "[%d]", a.Len())
	if inner, ok := a.Values.([]Array); ok && len(inner) > 0 {
		writeArrayType(b, inner[0])
		return
	}
	b.WriteString(a.Elem.String())
}

func writeValue(b *strings.Builder, v any) {
	switch v := v.(type) {
	case string:
		if len(v) > displayChars {
			fmt.Fprintf(b, "%q... (%d bytes)", v[:displayChars], len(v))
		} else {
			fmt.Fprintf(b, "%q", v)
		}
	case Array:
		n := v.Len()
		b.WriteByte('[')
		for i := 0; i < n && i < displayElems; i++ {
			if i > 0 {
				b.WriteString(", ")
			}
			writeValue(b, elem(v, i))
		}
		if n > displayElems {
			fmt.Fprintf(b, ", ... %d more", n-displayElems)
		}
		b.WriteByte(']')
	default:
		fmt.Fprint(b, v)
	}
}

// elem returns element i of a as a scalar value or Array.
func elem(a Array, i int) any {
	switch v := a.Values.(type) {
	case []uint8:
		return v[i]
	case []int8:
		return v[i]
	case []uint16:
		return v[i]
	case []int16:
		return v[i]
	case []uint32:
		return v[i]
	case []int32:
		return v[i]
	case []float32:
		return v[i]
	case []bool:
		return v[i]
	case []string:
		return v[i]
	case []uint64:
		return v[i]
	case []int64:
		return v[i]
	case []float64:
		return v[i]
	case []Array:
		return v[i]
	}
	return nil
}

// ParseKV decodes a key/value section of count pairs, such as
// formats.GGUFMeta.KV. raw must hold exactly the pairs. Error offsets are
// relative to the start of raw.
func ParseKV(raw []byte, count uint64) (Metadata, error) {
	d := decoder{b: raw}
	var m Metadata
	if _, _, err := d.kvWalk(count, &m); err != nil {
		return nil, err
	}
	if d.off != len(raw) {
		return nil, d.errAt(d.off, fmt.Errorf("%w: %d bytes after the last of %d keys", ErrFormat, len(raw)-d.off, count))
	}
	return m, nil
}

// decoder reads GGUF fields from b, which starts at file offset base.
type decoder struct {
	b      []byte
	off    int
	base   int64
	file   string
	key    string // key being decoded, named in errors
	tensor string // tensor info being decoded, named in errors
}

func (d *decoder) errAt(off int, err error) error {
	if d.key != "" {
		err = fmt.Errorf("%w (key %q)", err, d.key)
	}
	return &FormatError{File: d.file, Tensor: d.tensor, Offset: d.base + int64(off), Err: err}
}

func (d *decoder) remaining() int { return len(d.b) - d.off }

func (d *decoder) need(n uint64, what string) error {
	if n > uint64(d.remaining()) {
		return d.errAt(d.off, fmt.Errorf("%w: %s needs %d bytes, %d left", ErrTruncated, what, n, d.remaining()))
	}
	return nil
}

func (d *decoder) u32(what string) (uint32, error) {
	if err := d.need(4, what); err != nil {
		return 0, err
	}
	v := binary.LittleEndian.Uint32(d.b[d.off:])
	d.off += 4
	return v, nil
}

func (d *decoder) u64(what string) (uint64, error) {
	if err := d.need(8, what); err != nil {
		return 0, err
	}
	v := binary.LittleEndian.Uint64(d.b[d.off:])
	d.off += 8
	return v, nil
}

// str reads a string of at most limit bytes and returns its bytes, which
// alias d.b.
func (d *decoder) str(limit uint64, what string) ([]byte, error) {
	start := d.off
	if d.remaining() < 8 {
		return nil, d.need(8, what+" length") // builds the label only on error
	}
	n := binary.LittleEndian.Uint64(d.b[d.off:])
	d.off += 8
	if n > limit {
		return nil, d.errAt(start, fmt.Errorf("%w: %s of %d bytes (limit %d)", ErrLimit, what, n, limit))
	}
	if err := d.need(n, what); err != nil {
		return nil, err
	}
	s := d.b[d.off : d.off+int(n)]
	d.off += int(n)
	return s, nil
}

// kvWalk walks count key/value pairs. With m != nil it decodes the values
// into *m; otherwise it only validates them. It returns the value of
// general.alignment and whether the key was present.
func (d *decoder) kvWalk(count uint64, m *Metadata) (align uint32, hasAlign bool, err error) {
	const minKV = 8 + 4 + 1 // key length, value type, smallest value
	if count > MaxCount {
		return 0, false, d.errAt(d.off, fmt.Errorf("%w: %d keys (limit %d)", ErrLimit, count, MaxCount))
	}
	if count > uint64(d.remaining()/minKV) {
		return 0, false, d.errAt(d.off, fmt.Errorf("%w: %d keys cannot fit in %d bytes", ErrTruncated, count, d.remaining()))
	}
	if m != nil {
		*m = make(Metadata, 0, count)
	}
	seen := make(map[string]struct{}, count)
	for i := uint64(0); i < count; i++ {
		keyOff := d.off
		kb, err := d.str(MaxKeyLen, "key")
		if err != nil {
			return 0, false, err
		}
		key := string(kb)
		if _, dup := seen[key]; dup {
			return 0, false, d.errAt(keyOff, fmt.Errorf("%w: duplicate key %q", ErrFormat, key))
		}
		seen[key] = struct{}{}
		d.key = key
		typOff := d.off
		t, err := d.u32("value type")
		if err != nil {
			return 0, false, err
		}
		vt := ValueType(t)
		valOff := d.off
		v, err := d.value(vt, 0, m != nil)
		if err != nil {
			return 0, false, err
		}
		if key == AlignmentKey {
			if vt != TypeUint32 {
				return 0, false, d.errAt(typOff, fmt.Errorf("%w: %s has type %s, want uint32", ErrFormat, AlignmentKey, vt))
			}
			align = binary.LittleEndian.Uint32(d.b[valOff:])
			if align == 0 || align&(align-1) != 0 {
				return 0, false, d.errAt(valOff, fmt.Errorf("%w: %s %d is not a power of two", ErrFormat, AlignmentKey, align))
			}
			if align > formats.MaxAlignment {
				return 0, false, d.errAt(valOff, fmt.Errorf("%w: %s %d (limit %d)", ErrLimit, AlignmentKey, align, formats.MaxAlignment))
			}
			hasAlign = true
		}
		if m != nil {
			*m = append(*m, KV{Key: key, Type: vt, Value: v})
		}
		d.key = ""
	}
	return align, hasAlign, nil
}

// value reads one value of type t at nesting depth depth. Without decode it
// only validates and returns nil.
func (d *decoder) value(t ValueType, depth int, decode bool) (any, error) {
	if n := t.size(); n > 0 {
		if err := d.need(uint64(n), t.String()+" value"); err != nil {
			return nil, err
		}
		p := d.b[d.off:]
		d.off += n
		if !decode {
			return nil, nil
		}
		return scalar(t, p), nil
	}
	switch t {
	case TypeString:
		s, err := d.str(MaxStringLen, "string")
		if err != nil || !decode {
			return nil, err
		}
		return string(s), nil
	case TypeArray:
		a, err := d.array(depth+1, decode)
		if err != nil || !decode {
			return nil, err
		}
		return a, nil
	}
	return nil, d.errAt(d.off-4, fmt.Errorf("%w: unknown value type %d", ErrFormat, uint32(t)))
}

func scalar(t ValueType, p []byte) any {
	switch t {
	case TypeUint8:
		return p[0]
	case TypeInt8:
		return int8(p[0])
	case TypeBool:
		return p[0] != 0
	case TypeUint16:
		return binary.LittleEndian.Uint16(p)
	case TypeInt16:
		return int16(binary.LittleEndian.Uint16(p))
	case TypeUint32:
		return binary.LittleEndian.Uint32(p)
	case TypeInt32:
		return int32(binary.LittleEndian.Uint32(p))
	case TypeFloat32:
		return math.Float32frombits(binary.LittleEndian.Uint32(p))
	case TypeUint64:
		return binary.LittleEndian.Uint64(p)
	case TypeInt64:
		return int64(binary.LittleEndian.Uint64(p))
	case TypeFloat64:
		return math.Float64frombits(binary.LittleEndian.Uint64(p))
	}
	return nil
}

// array reads an array's element type, count and elements.
func (d *decoder) array(depth int, decode bool) (any, error) {
	start := d.off
	if depth > MaxDepth {
		return nil, d.errAt(start, fmt.Errorf("%w: arrays nested more than %d deep", ErrLimit, MaxDepth))
	}
	et, err := d.u32("array element type")
	if err != nil {
		return nil, err
	}
	elem := ValueType(et)
	min := elem.minSize()
	if min == 0 {
		return nil, d.errAt(start, fmt.Errorf("%w: unknown array element type %d", ErrFormat, et))
	}
	n, err := d.u64("array length")
	if err != nil {
		return nil, err
	}
	if n > MaxArrayLen {
		return nil, d.errAt(start, fmt.Errorf("%w: array of %d elements (limit %d)", ErrLimit, n, MaxArrayLen))
	}
	if n > uint64(d.remaining()/min) {
		return nil, d.errAt(start, fmt.Errorf("%w: array of %d %s elements cannot fit in %d bytes", ErrTruncated, n, elem, d.remaining()))
	}
	cnt := int(n)
	if sz := elem.size(); sz > 0 {
		p := d.b[d.off : d.off+cnt*sz]
		d.off += cnt * sz
		if !decode {
			return nil, nil
		}
		return Array{Elem: elem, Values: fixedSlice(elem, p, cnt)}, nil
	}
	switch elem {
	case TypeString:
		var vals []string
		if decode {
			vals = make([]string, cnt)
		}
		for i := 0; i < cnt; i++ {
			s, err := d.str(MaxStringLen, "string")
			if err != nil {
				return nil, err
			}
			if decode {
				vals[i] = string(s)
			}
		}
		if !decode {
			return nil, nil
		}
		return Array{Elem: elem, Values: vals}, nil
	default: // TypeArray
		var vals []Array
		if decode {
			vals = make([]Array, cnt)
		}
		for i := 0; i < cnt; i++ {
			v, err := d.array(depth+1, decode)
			if err != nil {
				return nil, err
			}
			if decode {
				vals[i] = v.(Array)
			}
		}
		if !decode {
			return nil, nil
		}
		return Array{Elem: elem, Values: vals}, nil
	}
}

// fixedSlice decodes n elements of fixed-size type t from p.
func fixedSlice(t ValueType, p []byte, n int) any {
	le := binary.LittleEndian
	switch t {
	case TypeUint8:
		return append([]uint8(nil), p...)
	case TypeInt8:
		return decodeLE(p, n, 1, func(b []byte) int8 { return int8(b[0]) })
	case TypeBool:
		return decodeLE(p, n, 1, func(b []byte) bool { return b[0] != 0 })
	case TypeUint16:
		return decodeLE(p, n, 2, le.Uint16)
	case TypeInt16:
		return decodeLE(p, n, 2, func(b []byte) int16 { return int16(le.Uint16(b)) })
	case TypeUint32:
		return decodeLE(p, n, 4, le.Uint32)
	case TypeInt32:
		return decodeLE(p, n, 4, func(b []byte) int32 { return int32(le.Uint32(b)) })
	case TypeFloat32:
		return decodeLE(p, n, 4, func(b []byte) float32 { return math.Float32frombits(le.Uint32(b)) })
	case TypeUint64:
		return decodeLE(p, n, 8, le.Uint64)
	case TypeInt64:
		return decodeLE(p, n, 8, func(b []byte) int64 { return int64(le.Uint64(b)) })
	case TypeFloat64:
		return decodeLE(p, n, 8, func(b []byte) float64 { return math.Float64frombits(le.Uint64(b)) })
	}
	return nil
}

// decodeLE decodes n elements of size bytes each from p with get.
func decodeLE[T any](p []byte, n, size int, get func([]byte) T) []T {
	v := make([]T, n)
	for i := range v {
		v[i] = get(p[size*i:])
	}
	return v
}
