package gguf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// errEncode is wrapped by EncodeKV's errors.
var errEncode = errors.New("gguf: cannot encode metadata")

// EncodeKV encodes pairs as a GGUF key/value section, the bytes stored in
// formats.GGUFMeta.KV (with KVCount = len(kvs)). Each Value must have the Go
// type that its Type calls for (see KV); keys must be unique, and lengths and
// nesting must be within the limits that ParseKV enforces.
func EncodeKV(kvs []KV) ([]byte, error) {
	if len(kvs) > MaxCount {
		return nil, fmt.Errorf("%w: %d keys (limit %d)", errEncode, len(kvs), MaxCount)
	}
	seen := make(map[string]struct{}, len(kvs))
	var b []byte
	for _, kv := range kvs {
		if len(kv.Key) > MaxKeyLen {
			return nil, fmt.Errorf("%w: key of %d bytes (limit %d)", errEncode, len(kv.Key), MaxKeyLen)
		}
		if _, dup := seen[kv.Key]; dup {
			return nil, fmt.Errorf("%w: duplicate key %q", errEncode, kv.Key)
		}
		seen[kv.Key] = struct{}{}
		b = appendString(b, kv.Key)
		b = binary.LittleEndian.AppendUint32(b, uint32(kv.Type))
		var err error
		if b, err = appendValue(b, kv.Type, kv.Value, 0); err != nil {
			return nil, fmt.Errorf("%w: key %q: %w", errEncode, kv.Key, err)
		}
	}
	return b, nil
}

func appendString(b []byte, s string) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
	return append(b, s...)
}

func appendValue(b []byte, t ValueType, v any, depth int) ([]byte, error) {
	le := binary.LittleEndian
	ok := true
	switch t {
	case TypeUint8:
		var x uint8
		x, ok = v.(uint8)
		b = append(b, x)
	case TypeInt8:
		var x int8
		x, ok = v.(int8)
		b = append(b, byte(x))
	case TypeBool:
		var x bool
		x, ok = v.(bool)
		if x {
			b = append(b, 1)
		} else {
			b = append(b, 0)
		}
	case TypeUint16:
		b, ok = appendAs(b, v, le.AppendUint16)
	case TypeInt16:
		b, ok = appendAs(b, v, func(b []byte, x int16) []byte { return le.AppendUint16(b, uint16(x)) })
	case TypeUint32:
		b, ok = appendAs(b, v, le.AppendUint32)
	case TypeInt32:
		b, ok = appendAs(b, v, func(b []byte, x int32) []byte { return le.AppendUint32(b, uint32(x)) })
	case TypeFloat32:
		b, ok = appendAs(b, v, func(b []byte, x float32) []byte { return le.AppendUint32(b, math.Float32bits(x)) })
	case TypeUint64:
		b, ok = appendAs(b, v, le.AppendUint64)
	case TypeInt64:
		b, ok = appendAs(b, v, func(b []byte, x int64) []byte { return le.AppendUint64(b, uint64(x)) })
	case TypeFloat64:
		b, ok = appendAs(b, v, func(b []byte, x float64) []byte { return le.AppendUint64(b, math.Float64bits(x)) })
	case TypeString:
		var x string
		if x, ok = v.(string); ok {
			if len(x) > MaxStringLen {
				return nil, fmt.Errorf("string of %d bytes (limit %d)", len(x), MaxStringLen)
			}
			b = appendString(b, x)
		}
	case TypeArray:
		var a Array
		if a, ok = v.(Array); ok {
			return appendArray(b, a, depth+1)
		}
	default:
		return nil, fmt.Errorf("unknown value type %d", uint32(t))
	}
	if !ok {
		return nil, fmt.Errorf("value of Go type %T for GGUF type %s", v, t)
	}
	return b, nil
}

// appendAs appends v, which must be a T, with f; ok is false when v is
// not a T.
func appendAs[T any](b []byte, v any, f func([]byte, T) []byte) ([]byte, bool) {
	x, ok := v.(T)
	return f(b, x), ok
}

func appendArray(b []byte, a Array, depth int) ([]byte, error) {
	if depth > MaxDepth {
		return nil, fmt.Errorf("arrays nested more than %d deep", MaxDepth)
	}
	n := a.Len()
	if n > MaxArrayLen {
		return nil, fmt.Errorf("array of %d elements (limit %d)", n, MaxArrayLen)
	}
	if a.Elem.minSize() == 0 {
		return nil, fmt.Errorf("unknown array element type %d", uint32(a.Elem))
	}
	if a.Values != nil && !sliceOf(a.Elem, a.Values) {
		return nil, fmt.Errorf("array values of Go type %T for element type %s", a.Values, a.Elem)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(a.Elem))
	b = binary.LittleEndian.AppendUint64(b, uint64(n))
	for i := 0; i < n; i++ {
		var err error
		if b, err = appendValue(b, a.Elem, elem(a, i), depth); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// sliceOf reports whether v is the slice type that holds elements of t.
func sliceOf(t ValueType, v any) bool {
	var ok bool
	switch t {
	case TypeUint8:
		_, ok = v.([]uint8)
	case TypeInt8:
		_, ok = v.([]int8)
	case TypeBool:
		_, ok = v.([]bool)
	case TypeUint16:
		_, ok = v.([]uint16)
	case TypeInt16:
		_, ok = v.([]int16)
	case TypeUint32:
		_, ok = v.([]uint32)
	case TypeInt32:
		_, ok = v.([]int32)
	case TypeFloat32:
		_, ok = v.([]float32)
	case TypeUint64:
		_, ok = v.([]uint64)
	case TypeInt64:
		_, ok = v.([]int64)
	case TypeFloat64:
		_, ok = v.([]float64)
	case TypeString:
		_, ok = v.([]string)
	case TypeArray:
		_, ok = v.([]Array)
	}
	return ok
}
