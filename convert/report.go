package convert

import (
	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/formats"
)

// TensorReport is one tensor's line in a Report.
type TensorReport struct {
	Name   string  `json:"name"`
	DType  string  `json:"dtype"`
	Shape  []int64 `json:"shape"`
	Codec  string  `json:"codec"`
	Params string  `json:"params,omitempty"`
	// SourceBytes is the tensor's size in the source; StoredBytes the
	// whole record in the .tpk (header, payload and checksum).
	SourceBytes int64 `json:"source_bytes"`
	StoredBytes int64 `json:"stored_bytes"`
	// BPW is StoredBytes·8 / elements: bits per weight, all-in.
	BPW float64 `json:"bpw"`
	// Ratio is StoredBytes / SourceBytes.
	Ratio   float64  `json:"ratio"`
	RelErr  *float64 `json:"rel_err,omitempty"`
	SQNRdB  *float64 `json:"sqnr_db,omitempty"`
	Note    string   `json:"note,omitempty"`
	Elems   int64    `json:"elems"`
	Lossy   bool     `json:"compressed"`
	Transp  bool     `json:"transposed,omitempty"`
	RecordN int      `json:"-"`
	// PayloadBPW, for a tensor coded by a codec that plans
	// (codec.Plans), is its payload's bits per weight (the record's
	// header and checksum left out): the rate rate control gave it.
	PayloadBPW float64 `json:"payload_bpw,omitempty"`
	// EstSQNRdB is the importance-weighted SQNR the plan estimated for
	// the tensor, when its record's params carry one (plans of estimated
	// sizes, codec.SizeEstimator; 999 for no error).
	EstSQNRdB *float64 `json:"est_wsqnr_db,omitempty"`
}

// Totals sums a Report.
type Totals struct {
	Tensors       int   `json:"tensors"`
	Compressed    int   `json:"compressed"`
	PassedThrough int   `json:"passed_through"`
	Params        int64 `json:"params"`
	// Lossless counts the tensors stored by a lossless codec other than
	// none (bit-exact, counted in PassedThrough too), with their source
	// and stored bytes.
	Lossless            int   `json:"lossless"`
	LosslessSourceBytes int64 `json:"lossless_source_bytes"`
	LosslessStoredBytes int64 `json:"lossless_stored_bytes"`
	// CompressedParams counts the elements of compressed tensors.
	CompressedParams int64 `json:"compressed_params"`
	// BytesIn is the size of the source file(s); BytesOut of the .tpk.
	BytesIn  int64 `json:"bytes_in"`
	BytesOut int64 `json:"bytes_out"`
	// BPWAll is BytesOut·8 / Params: every byte of the file counted.
	BPWAll float64 `json:"bpw_all"`
	// BPWCompressed is the stored bytes of the compressed tensors ·8 /
	// CompressedParams.
	BPWCompressed float64 `json:"bpw_compressed"`
	// RatioFP16 is Params·2 / BytesOut; RatioSource is BytesIn / BytesOut.
	RatioFP16    float64 `json:"ratio_fp16"`
	RatioSource  float64 `json:"ratio_source"`
	WallSeconds  float64 `json:"wall_seconds,omitempty"`
	PeakRSSBytes int64   `json:"peak_rss_bytes,omitempty"`
}

// Report summarises a conversion or an inspected file.
type Report struct {
	Input   string         `json:"input"`
	Output  string         `json:"output,omitempty"`
	Kind    string         `json:"kind,omitempty"`
	Codec   string         `json:"codec,omitempty"`
	Params  string         `json:"params,omitempty"`
	Tensors []TensorReport `json:"tensors"`
	Totals  Totals         `json:"totals"`
	// Rate describes the plan of a --bpw / --target-size conversion.
	Rate *RateReport `json:"rate,omitempty"`
	// Allocation counts the per-tensor configurations of a codec that
	// plans (codec.Plans).
	Allocation []AllocShare `json:"allocation,omitempty"`
}

// newReport describes n stored tensors; entry returns the i-th one's
// index entry and fallback note.
func newReport(in, out string, inBytes, outBytes int64, n int, entry func(i int) (*formats.Record, string)) *Report {
	r := &Report{Input: in, Output: out, Tensors: make([]TensorReport, 0, n)}
	var stored float64
	plans := map[string]bool{}
	for i := range n {
		e, note := entry(i)
		elems := e.Info().Elems()
		tr := TensorReport{Name: e.Name, DType: e.DType.String(), Shape: e.Shape, Codec: e.Codec, Params: e.Params,
			SourceBytes: e.SourceSize, StoredBytes: e.RecordSize, Elems: elems, Lossy: !codec.IsByteDecoder(e.CodecID), Transp: e.Transposed}
		if e.SourceSize > 0 {
			tr.Ratio = float64(e.RecordSize) / float64(e.SourceSize)
		}
		tr.Note = note
		if elems > 0 {
			tr.BPW = float64(e.RecordSize) * 8 / float64(elems)
		}
		if e.Stats != nil {
			re, sq := e.Stats.RelErr, e.Stats.SQNRdB
			tr.RelErr, tr.SQNRdB = &re, &sq
		}
		if tr.Lossy && elems > 0 && plansCached(plans, e.Codec) {
			tr.PayloadBPW = float64(e.PayloadSize) * 8 / float64(elems)
			_, tr.EstSQNRdB = splitEstimate(e.Params)
		}
		r.Tensors = append(r.Tensors, tr)
		r.Totals.Tensors++
		r.Totals.Params += elems
		if tr.Lossy {
			r.Totals.Compressed++
			r.Totals.CompressedParams += elems
			stored += float64(e.RecordSize)
		} else {
			r.Totals.PassedThrough++
		}
		if !tr.Lossy && e.CodecID != codec.IDNone {
			r.Totals.Lossless++
			r.Totals.LosslessSourceBytes += e.SourceSize
			r.Totals.LosslessStoredBytes += e.RecordSize
		}
	}
	t := &r.Totals
	t.BytesIn, t.BytesOut = inBytes, outBytes
	if t.Params > 0 {
		t.BPWAll = float64(outBytes) * 8 / float64(t.Params)
	}
	if t.CompressedParams > 0 {
		t.BPWCompressed = stored * 8 / float64(t.CompressedParams)
	}
	if outBytes > 0 {
		t.RatioFP16 = float64(t.Params) * 2 / float64(outBytes)
		t.RatioSource = float64(inBytes) / float64(outBytes)
	}
	return r
}

// plansCached is codec.Plans(name), remembered in m.
func plansCached(m map[string]bool, name string) bool {
	p, ok := m[name]
	if !ok {
		p = codec.Plans(name)
		m[name] = p
	}
	return p
}
