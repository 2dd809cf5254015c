package convert

import (
	"context"
	"fmt"
	"math"
	"runtime"
	"sort"
	"time"

	"github.com/tpconvert/tpconvert/arch"
	"github.com/tpconvert/tpconvert/codec/tenpakx2"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/rate"
	"github.com/tpconvert/tpconvert/stream"
	"github.com/tpconvert/tpconvert/tensor"
)

// RateOptions ask CompressFile for a file of a given size: tenpak_x_v2
// with every selected tensor's grid chosen by package rate. Exactly one of
// BPW and TargetBytes is set.
type RateOptions struct {
	// BPW is the whole-file size in bits per parameter of the source.
	BPW float64
	// TargetBytes is the whole-file size in bytes.
	TargetBytes int64
	// SampleRows is the number of rows per tensor the estimate codes
	// (default: see rate.Options).
	SampleRows int
	// OnPlanStart, if set, is called before the estimates start with the
	// total source bytes of the tensors to estimate; OnPlan once per
	// tensor as its estimate ends.
	OnPlanStart func(total int64)
	OnPlan      func(t tensor.Info)
}

// RateReport describes a rate-controlled conversion.
type RateReport struct {
	RequestedBPW float64 `json:"requested_bpw,omitempty"`
	TargetBytes  int64   `json:"target_bytes"`
	// OverheadBytes bounds everything but the compressed payloads:
	// container, metadata, index and the tensors stored unchanged.
	OverheadBytes int64 `json:"overhead_bytes"`
	BudgetBytes   int64 `json:"payload_budget_bytes"`
	PayloadBytes  int64 `json:"payload_bytes"`
	// EstSQNRdB is −10·log10 of the mean over compressed tensors of the
	// relative importance-weighted error the plan expects.
	EstSQNRdB   float64 `json:"est_weighted_sqnr_db"`
	PlanSeconds float64 `json:"plan_seconds"`
}

// AllocShare is the share of one configuration in an allocation.
type AllocShare struct {
	Config  string `json:"config"`
	Tensors int    `json:"tensors"`
	Params  int64  `json:"params"`
	Bytes   int64  `json:"payload_bytes"`
}

// Allocation summarises per-tensor configurations (the Params of records
// coded by tenpak_x_v2), largest share first.
func Allocation(ts []TensorReport) []AllocShare {
	m := map[string]*AllocShare{}
	for _, t := range ts {
		if t.Codec != "tenpak_x_v2" {
			continue
		}
		a := m[t.Params]
		if a == nil {
			a = &AllocShare{Config: t.Params}
			m[t.Params] = a
		}
		a.Tensors++
		a.Params += t.Elems
		a.Bytes += t.StoredBytes
	}
	out := make([]AllocShare, 0, len(m))
	for _, a := range m {
		out = append(out, *a)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Params != out[j].Params {
			return out[i].Params > out[j].Params
		}
		return out[i].Config < out[j].Config
	})
	return out
}

// planRate builds the tenpak_x_v2 plan for src and returns the planned
// codec.
func planRate(ctx context.Context, src formats.Source, o *CompressOptions) (*tenpakx2.Codec, *RateReport, error) {
	start := time.Now()
	r := o.Rate
	var params int64
	for _, t := range src.Tensors() {
		params += t.Elems()
	}
	rep := &RateReport{RequestedBPW: r.BPW, TargetBytes: r.TargetBytes}
	if r.TargetBytes == 0 {
		if !(r.BPW > 0) || math.IsInf(r.BPW, 0) {
			return nil, nil, fmt.Errorf("--bpw must be a positive number of bits per parameter, got %v", r.BPW)
		}
		rep.TargetBytes = int64(math.Floor(r.BPW * float64(params) / 8))
	}
	transpose := func(t tensor.Info) bool { return arch.IsConv1D(t.Name) }
	sel := o.Selector.Select
	if r.OnPlanStart != nil {
		var total int64
		for _, t := range src.Tensors() {
			if sel(t) {
				total += t.Size
			}
		}
		r.OnPlanStart(total)
	}
	plan, err := rate.Build(ctx, src, sel, rate.Options{Workers: o.Workers, SampleRows: r.SampleRows, Transpose: transpose, Progress: r.OnPlan})
	if err != nil {
		return nil, nil, err
	}
	if len(plan.Tensors) == 0 && plan.Unsupported > 0 {
		return nil, nil, fmt.Errorf("tenpak_x_v2 cannot represent the %d selected tensor(s): they hold values that are not finite or exceed ±%d (compress them with --codec none, or --exclude them)", plan.Unsupported, tenpakx2.MaxAbs)
	}
	if len(plan.Tensors) == 0 {
		return nil, nil, fmt.Errorf("no tensor is selected for compression (see --layers and --include)")
	}
	// The overhead depends on the parameter strings, which depend on the
	// plan: estimate it with a long configuration name; Overhead's margin
	// per record covers the few bytes longer ones ("…s8") add.
	longest := map[string]tenpakx2.Config{}
	for _, t := range plan.Tensors {
		longest[t.Info.Name] = tenpakx2.Config{Grid: tenpakx2.GridSymmetric, Bits: 8, Group: 128}
	}
	probe := tenpakx2.NewPlanned(longest, nil, "")
	// Tensors the plan left out (values tenpak_x_v2 cannot hold) are
	// stored unchanged or losslessly: they count as overhead.
	over, err := stream.OverheadWith(src, newRecordSink, probe, func(t tensor.Info) bool { _, ok := longest[t.Name]; return ok && sel(t) }, o.PassThrough)
	if err != nil {
		return nil, nil, err
	}
	rep.OverheadBytes = over
	rep.BudgetBytes = rep.TargetBytes - over
	if err := plan.Allocate(rep.BudgetBytes); err != nil {
		minBits := float64(over+plan.MinBytes()) * 8 / float64(params)
		return nil, nil, fmt.Errorf("cannot fit %d bytes (%.3f bits/parameter): the smallest file tenpak_x_v2 can make here is about %d bytes (%.3f bits/parameter); ask for more, or compress fewer tensors",
			rep.TargetBytes, float64(rep.TargetBytes)*8/float64(params), over+plan.MinBytes(), minBits)
	}
	rep.PayloadBytes = plan.Bytes()
	var rel float64
	for _, t := range plan.Tensors {
		rel += t.Chosen().Dist / t.Weight // the error itself, without the objective's weight
	}
	if rel /= float64(len(plan.Tensors)); rel > 0 {
		rep.EstSQNRdB = -10 * math.Log10(rel)
	} else {
		rep.EstSQNRdB = 999
	}
	rep.PlanSeconds = time.Since(start).Seconds()
	summary := fmt.Sprintf("target=%d", rep.TargetBytes)
	if r.BPW > 0 {
		summary = fmt.Sprintf("bpw=%g %s", r.BPW, summary)
	}
	c := tenpakx2.NewPlanned(plan.Configs(), plan.Importance, summary)
	if o.Workers > 0 {
		c.SetWorkers(max(1, runtime.GOMAXPROCS(0)/o.Workers))
	}
	return c, rep, nil
}
