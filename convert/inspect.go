package convert

import (
	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/formats"
)

// Inspect describes the tensors of a .safetensors, .gguf or .tpk file (or a
// checkout directory) from its headers and index alone.
func Inspect(path string) (*Report, error) {
	kind, err := formats.Detect(path)
	if err != nil {
		return nil, err
	}
	if kind == records {
		r, err := openRecords(path)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		var in int64
		for _, f := range r.Meta().Files {
			in += f.Size
		}
		es := r.Entries()
		rep := newReport(path, "", in, r.Size(), len(es), func(i int) (*formats.Record, string) { return &es[i], "" })
		rep.Kind = string(kind) + " (from " + string(r.Meta().Kind) + ")"
		rep.Allocation = Allocation(rep.Tensors)
		if len(rep.Allocation) > 0 {
			for _, t := range rep.Tensors {
				if codec.Plans(t.Codec) {
					rep.Codec = t.Codec
					break
				}
			}
			rep.Params = "(configuration per tensor: see allocation)"
			return rep, nil
		}
		for _, e := range r.Entries() {
			if e.CodecID != 0 {
				rep.Codec, rep.Params = e.Codec, e.Params
				break
			}
		}
		return rep, nil
	}
	src, err := OpenSource(path)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	rep := &Report{Input: path, Kind: string(kind)}
	var size int64
	for _, f := range src.Meta().Files {
		size += f.Size
	}
	for _, t := range src.Tensors() {
		n := t.Elems()
		tr := TensorReport{Name: t.Name, DType: t.DType.String(), Shape: t.Shape, SourceBytes: t.Size, StoredBytes: t.Size, Elems: n, Ratio: 1}
		if n > 0 {
			tr.BPW = float64(t.Size) * 8 / float64(n)
		}
		rep.Tensors = append(rep.Tensors, tr)
		rep.Totals.Tensors++
		rep.Totals.PassedThrough++
		rep.Totals.Params += n
	}
	t := &rep.Totals
	t.BytesIn, t.BytesOut = size, size
	if t.Params > 0 {
		t.BPWAll = float64(size) * 8 / float64(t.Params)
		t.RatioFP16 = float64(t.Params) * 2 / float64(size)
		t.RatioSource = 1
	}
	return rep, nil
}
