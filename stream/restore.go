package stream

import (
	"context"
	"fmt"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/tensor"
)

// RestoreOptions configure Restore.
type RestoreOptions struct {
	Options
	// DType is the element type written for every floating-point tensor:
	// those stored by a lossy codec and those stored unchanged in a float
	// type (norms, embeddings), which then come back converted rather
	// than bit-exact. Invalid (zero) means the source dtype: unchanged
	// tensors bit-exact, decoded ones in their source float type, F16 for
	// a block-quantized source.
	DType tensor.DType
	// Dequantize, when set (F32, F16 or BF16), also converts tensors
	// stored unchanged in a ggml block-quantized type to this dtype.
	Dequantize tensor.DType
}

// Plan returns the tensors Restore will write, in record order, with the
// dtype and size each will have. Sinks are created from it.
func Plan(r formats.RecordSource, o RestoreOptions) ([]tensor.Info, error) {
	if o.DType != tensor.Invalid && !o.DType.IsFloat() {
		return nil, fmt.Errorf("restore: output dtype must be f32, f16, bf16 or that of the source, not %s", o.DType)
	}
	if o.Dequantize != tensor.Invalid && !o.Dequantize.IsFloat() {
		return nil, fmt.Errorf("restore: dequantized dtype must be f32, f16 or bf16, not %s", o.Dequantize)
	}
	es := r.Entries()
	out := make([]tensor.Info, len(es))
	for i := range es {
		e := &es[i]
		t := e.Info()
		switch {
		case !codec.IsByteDecoder(e.CodecID):
			switch {
			case o.DType != tensor.Invalid:
				t.DType = o.DType
			case !t.DType.IsFloat():
				t.DType = tensor.F16
			}
		case o.Dequantize != tensor.Invalid && t.DType.IsQuantized():
			if !tensor.CanDecode(t.DType) {
				return nil, fmt.Errorf("restore: tensor %q: cannot dequantize %s", t.Name, t.DType)
			}
			t.DType = o.Dequantize
		case o.DType != tensor.Invalid && t.DType.IsFloat():
			t.DType = o.DType
		}
		sz, err := tensor.ByteSize(t.DType, t.Shape)
		if err != nil {
			return nil, fmt.Errorf("restore: tensor %q: %w", t.Name, err)
		}
		t.Size = sz
		out[i] = t
	}
	return out, nil
}

// maxElemsPerPayloadByte bounds the elements one payload byte may stand
// for: 1/8 bit per weight, far below the densest encoding a .tpk holds
// (ggml's IQ1_S stored unchanged, 1.5625 bits; the lossy codecs store at
// least 4). A record claiming more is corrupt, and Restore says so before
// allocating the buffers its shape asks for, so a lying shape cannot
// exhaust memory.
const maxElemsPerPayloadByte = 64

// Restore decodes every record of r and writes the tensors planned by Plan
// to sink, in record order. A record processed in row chunks reaches sink
// in parts before its checksum is verified at its last part: when Restore
// fails, the caller must discard what sink holds (as convert.RestoreFile
// does with its temporary file).
func Restore(ctx context.Context, r formats.RecordSource, plan []tensor.Info, sink formats.Sink, o RestoreOptions) error {
	o.defaults()
	es := r.Entries()
	if len(plan) != len(es) {
		return fmt.Errorf("restore: plan has %d tensors, file %d", len(plan), len(es))
	}
	codecs := map[uint16]codec.Codec{}
	for i := range es {
		id := es[i].CodecID
		if _, ok := codecs[id]; ok {
			continue
		}
		c, err := codec.ByID(id)
		if err != nil {
			return &formats.Error{File: r.Name(), Tensor: es[i].Name, Offset: es[i].RecordOffset, Err: err}
		}
		if es[i].CodecVersion > c.Version() || es[i].CodecVersion == 0 {
			return &formats.Error{File: r.Name(), Tensor: es[i].Name, Offset: es[i].RecordOffset,
				Err: fmt.Errorf("%w: %s version %d (supported 1-%d)", codec.ErrUnknown, c.Name(), es[i].CodecVersion, c.Version())}
		}
		codecs[id] = c
	}
	cost := func(i int) int64 {
		e := &es[i]
		c := e.RecordSize
		if _, ok := codecs[e.CodecID].(codec.ByteDecoder); ok && plan[i].DType == e.DType {
			return c + plan[i].Size + codecs[e.CodecID].Cost(plan[i])
		}
		if e.CodecID != codec.IDNone || plan[i].DType != e.DType {
			n := plan[i].Elems()
			if !floatDecoded(codecs[e.CodecID], e, plan[i]) {
				c += 4 * n
			}
			c += plan[i].Size + codecs[e.CodecID].Cost(plan[i])
		}
		return c
	}
	prog := newTracker(o.Progress, len(es))
	work := func(ctx context.Context, i int) ([]byte, error) {
		e := &es[i]
		p, err := r.Payload(i)
		if err != nil {
			return nil, err
		}
		if e.CodecID == codec.IDNone && plan[i].DType == e.DType {
			return p, nil
		}
		n := plan[i].Elems()
		if n > maxElemsPerPayloadByte*int64(len(p)) {
			return nil, r.Corrupt(i, e.PayloadOffset, fmt.Errorf("%d elements declared for a payload of %d bytes", n, len(p)))
		}
		if bd, ok := codecs[e.CodecID].(codec.ByteDecoder); ok && plan[i].DType == e.DType {
			b, err := bd.DecodeBytes(p, e.Info(), e.CodecVersion)
			if err != nil {
				return nil, &formats.Error{File: r.Name(), Tensor: e.Name, Offset: e.PayloadOffset, Err: err}
			}
			return b, nil
		}
		if floatDecoded(codecs[e.CodecID], e, plan[i]) {
			// Straight to the planned dtype, a row at a time: the codec
			// refuses a value that is not finite itself.
			out := make([]byte, plan[i].Size)
			rows, _ := e.Info().Matrix()
			if err := codecs[e.CodecID].(codec.FloatDecoder).DecodeRowsTo(out, plan[i].DType, p, e.Info(), e.CodecVersion, 0, rows); err != nil {
				return nil, &formats.Error{File: r.Name(), Tensor: e.Name, Offset: e.PayloadOffset, Err: err}
			}
			if done := prog.within(i, plan[i], e.SourceSize); done != nil {
				done(n)
			}
			return out, nil
		}
		x := make([]float32, n)
		src := e.Info()
		if e.Transposed {
			src.Shape = []int64{e.Shape[1], e.Shape[0]}
		}
		if err := codecs[e.CodecID].Decode(x, p, src, e.CodecVersion); err != nil {
			return nil, &formats.Error{File: r.Name(), Tensor: e.Name, Offset: e.PayloadOffset, Err: err}
		}
		byteDecoded := codec.IsByteDecoder(e.CodecID) // once per record: it builds a codec
		// Compress stores a tensor whose encoding decodes to a value
		// that is not finite unchanged instead; such a payload has
		// damaged parameters (a NaN or infinite scale, say). Tensors
		// stored unchanged keep whatever values the source held.
		for k, v := range x {
			if byteDecoded {
				break
			}
			if !finite(v) {
				return nil, &formats.Error{File: r.Name(), Tensor: e.Name, Offset: e.PayloadOffset,
					Err: fmt.Errorf("%w: element %d decodes to %v (a non-finite codec parameter)", codec.ErrCorrupt, k, v)}
			}
		}
		if done := prog.within(i, plan[i], e.SourceSize); done != nil {
			done(n) // decoded; the rest when written
		}
		if e.Transposed {
			x = transpose(x, int(e.Shape[1]), int(e.Shape[0]))
		}
		out := make([]byte, plan[i].Size)
		if err := tensor.FromFloat32(out, plan[i].DType, x); err != nil {
			return nil, fmt.Errorf("tensor %q: %w", e.Name, err)
		}
		return out, nil
	}
	write := func(i int, b []byte) error {
		if err := sink.WriteTensor(plan[i], b); err != nil {
			return err
		}
		r.Release(i)
		prog.written(i, plan[i], es[i].SourceSize)
		return nil
	}
	splits := restoreSplits(es, plan, codecs, sink)
	items := planItems(len(es), splits, cost, o.MaxMemory, 0)
	rc := restoreChunks{r: r, plan: plan, codecs: codecs, sink: sink, splits: splits, items: items, prog: prog,
		work: work, write: write, pays: make([][]byte, len(es)), hashes: make([]formats.PayloadHash, len(es)),
		ready: make([]chan struct{}, len(es)), index: make([]codec.ChunkIndex, len(es))}
	for i, s := range splits {
		if s != nil {
			rc.ready[i] = make(chan struct{})
		}
	}
	return ordered(ctx, len(items), o.Workers, o.MaxMemory, itemCost(items), rc.doWork, rc.doWrite)
}

// floatDecoded reports whether record e is restored to plan by its codec's
// codec.FloatDecoder: to a float dtype, and not transposed.
func floatDecoded(c codec.Codec, e *formats.Record, plan tensor.Info) bool {
	_, ok := c.(codec.FloatDecoder)
	return ok && !e.Transposed && plan.DType.IsFloat()
}
