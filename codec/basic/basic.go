// Package basic registers the lossless and float-cast codecs:
//
//	none  (ID 0)  the tensor's source bytes, unchanged (any dtype)
//	f16   (ID 1)  IEEE 754 binary16, little-endian, round to nearest even
//	bf16  (ID 2)  bfloat16, little-endian, round to nearest even
package basic

import (
	"fmt"
	"io"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/tensor"
)

func init() {
	codec.Register(codec.IDNone, "none", "source bytes unchanged (lossless, any dtype)", noOptions(None{}))
	codec.Register(codec.IDF16, "f16", "cast to IEEE binary16 (16 bits/weight)", noOptions(Cast{dt: tensor.F16, id: codec.IDF16, name: "f16"}))
	codec.Register(codec.IDBF16, "bf16", "cast to bfloat16 (16 bits/weight)", noOptions(Cast{dt: tensor.BF16, id: codec.IDBF16, name: "bf16"}))
}

// noOptions returns the factory of c, which takes no rank or group size.
func noOptions(c codec.Codec) codec.Factory {
	return func(o codec.Options) (codec.Codec, error) {
		if err := o.Only(c.Name(), 0); err != nil {
			return nil, err
		}
		return c, nil
	}
}

// None stores a tensor's source bytes unchanged.
type None struct{}

// ID implements codec.Codec.
func (None) ID() uint16 { return codec.IDNone }

// Name implements codec.Codec.
func (None) Name() string { return "none" }

// Version implements codec.Codec.
func (None) Version() uint16 { return 1 }

// Params implements codec.Codec.
func (None) Params() string { return "" }

// Cost implements codec.Codec: None needs no working memory.
func (None) Cost(tensor.Info) int64 { return 0 }

// EncodeBytes implements codec.ByteCodec.
func (None) EncodeBytes(w io.Writer, t tensor.Info, src []byte) error {
	_, err := w.Write(src)
	return err
}

// Encode implements codec.Codec for float tensors: it stores x in t.DType.
func (None) Encode(w io.Writer, t tensor.Info, x []float32) error {
	if !t.DType.IsFloat() {
		return fmt.Errorf("%w: none.Encode of %s values", codec.ErrUnsupported, t.DType)
	}
	b := make([]byte, int64(len(x))*t.DType.BlockBytes())
	if err := tensor.FromFloat32(b, t.DType, x); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

// Decode implements codec.Codec: it decodes the source bytes to float32.
func (None) Decode(dst []float32, payload []byte, t tensor.Info, _ uint16) error {
	if err := tensor.ToFloat32(dst, t.DType, payload); err != nil {
		return fmt.Errorf("%w: %v", codec.ErrCorrupt, err)
	}
	return nil
}

// Cast stores every element as a 16-bit float.
type Cast struct {
	dt   tensor.DType
	id   uint16
	name string
}

// ID implements codec.Codec.
func (c Cast) ID() uint16 { return c.id }

// Name implements codec.Codec.
func (c Cast) Name() string { return c.name }

// Version implements codec.Codec.
func (Cast) Version() uint16 { return 1 }

// Params implements codec.Codec.
func (Cast) Params() string { return "" }

// Cost implements codec.Codec: the encoded buffer.
func (Cast) Cost(t tensor.Info) int64 { return 2 * t.Elems() }

// Encode implements codec.Codec.
func (c Cast) Encode(w io.Writer, t tensor.Info, x []float32) error {
	b := make([]byte, 2*len(x))
	if err := tensor.FromFloat32(b, c.dt, x); err != nil {
		return err
	}
	_, err := w.Write(b)
	return err
}

// RowBytes implements codec.RowCodec: two bytes per element.
func (Cast) RowBytes(t tensor.Info) int64 {
	if len(t.Shape) == 0 || t.Shape[0] <= 0 {
		return 0
	}
	return 2 * (t.Elems() / t.Shape[0])
}

// MaxRelErr implements codec.ErrorBounder: a 16-bit float keeps 8 (bf16)
// or 11 (f16) significant bits, a relative error below 2^-8 per element
// inside its range; a tensor beyond it (overflow, or values flushed
// towards zero) is stored unchanged.
func (Cast) MaxRelErr(tensor.Info) float64 { return 0.01 }

// Decode implements codec.Codec.
func (c Cast) Decode(dst []float32, payload []byte, t tensor.Info, version uint16) error {
	if version != 1 {
		return fmt.Errorf("%w: %s version %d (supported 1)", codec.ErrCorrupt, c.name, version)
	}
	if len(payload) != 2*len(dst) {
		return fmt.Errorf("%w: %s payload of %d bytes for %d elements", codec.ErrCorrupt, c.name, len(payload), len(dst))
	}
	return tensor.ToFloat32(dst, c.dt, payload)
}
