package convert

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/tpconvert/tpconvert/arch"
	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/rate"
	"github.com/tpconvert/tpconvert/stream"
	"github.com/tpconvert/tpconvert/tensor"
)

// RateOptions ask CompressFile for a file of a given size: the codec,
// which must plan (codec.Planner), codes every selected tensor with the
// configuration package rate chooses for it. Exactly one of BPW and
// TargetBytes is set.
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
	// notes, for a plan of estimated sizes, is each planned tensor's
	// estimate, appended to its record's params (estNote).
	notes map[string]string
}

// AllocShare is the share of one configuration in an allocation.
type AllocShare struct {
	Config  string `json:"config"`
	Tensors int    `json:"tensors"`
	Params  int64  `json:"params"`
	Bytes   int64  `json:"payload_bytes"`
}

// Allocation summarises per-tensor configurations (the Params of records
// coded by codecs that plan, codec.Plans), largest share first.
func Allocation(ts []TensorReport) []AllocShare {
	m := map[string]*AllocShare{}
	plans := map[string]bool{}
	for _, t := range ts {
		if !plansCached(plans, t.Codec) {
			continue
		}
		cfg, _ := splitEstimate(t.Params)
		a := m[cfg]
		if a == nil {
			a = &AllocShare{Config: cfg}
			m[cfg] = a
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

// ErrNotPlanner is returned (wrapped) by CompressFile for a rate request
// whose codec does not plan per tensor (codec.Planner).
var ErrNotPlanner = errors.New("the codec cannot be sized: it has no per-tensor configurations for rate control")

// Errors of rate control, in the library's words (the command line adds
// the flags that change them).
var (
	// ErrBadRate: RateOptions asks for no positive, finite size.
	ErrBadRate = errors.New("the size asked for must be a positive, finite number of bits per parameter")
	// ErrUnrepresentable: every selected tensor holds values the rate
	// codec cannot represent; store them unchanged or leave them out.
	ErrUnrepresentable = errors.New("cannot represent the selected tensors")
	// ErrNothingSelected: the selector picks no tensor to compress.
	ErrNothingSelected = errors.New("no tensor is selected for compression")
)

// planRate builds the plan of the planner o.Codec for src and returns the
// planned codec.
func planRate(ctx context.Context, src formats.Source, o *CompressOptions) (codec.Codec, *RateReport, error) {
	start := time.Now()
	r := o.Rate
	c := o.Codec
	if c == nil {
		var err error
		if c, err = codec.New(codec.Default(), codec.Options{}); err != nil {
			return nil, nil, err
		}
	}
	p, ok := c.(codec.Planner)
	if !ok {
		return nil, nil, fmt.Errorf("%s: %w", c.Name(), ErrNotPlanner)
	}
	var params int64
	for _, t := range src.Tensors() {
		params += t.Elems()
	}
	rep := &RateReport{RequestedBPW: r.BPW, TargetBytes: r.TargetBytes}
	if r.TargetBytes == 0 {
		if !(r.BPW > 0) || math.IsInf(r.BPW, 0) {
			return nil, nil, fmt.Errorf("%w, got %v", ErrBadRate, r.BPW)
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
	plan, err := rate.Build(ctx, src, p, sel, rate.Options{Workers: o.Workers, SampleRows: r.SampleRows, Transpose: transpose, Progress: r.OnPlan})
	if err != nil {
		return nil, nil, err
	}
	if len(plan.Tensors) == 0 && plan.Unsupported > 0 {
		return nil, nil, fmt.Errorf("%s %w (%d: %v)", p.Name(), ErrUnrepresentable, plan.Unsupported, plan.UnsupportedErr)
	}
	if len(plan.Tensors) == 0 {
		return nil, nil, ErrNothingSelected
	}
	// The overhead depends on the parameter strings, which depend on the
	// plan: it is bounded with each tensor's longest candidate name.
	longest, err := plan.Longest(p)
	if err != nil {
		return nil, nil, err
	}
	// Tensors the plan left out (values the codec cannot hold) are
	// stored unchanged or losslessly: they count as overhead.
	planned := make(map[string]bool, len(plan.Tensors))
	for _, t := range plan.Tensors {
		planned[t.Info.Name] = true
	}
	// An estimated plan's file is bounded more tightly (the offsets in
	// its index have no more digits than the target); the bound of exact
	// plans is kept as it was, and with it their allocations.
	var limit int64
	newSink := newRecordSink
	if plan.Estimated {
		limit = rep.TargetBytes
		// Every planned record's params carry an estimate.
		longestNotes := make(map[string]string, len(plan.Tensors))
		for _, t := range plan.Tensors {
			longestNotes[t.Info.Name] = longestNote
		}
		newSink = withNotes(longest.ID(), longestNotes)
	}
	over, err := stream.OverheadWithin(src, newSink, longest, func(t tensor.Info) bool { return planned[t.Name] && sel(t) }, o.PassThrough, limit)
	if err != nil {
		return nil, nil, err
	}
	rep.OverheadBytes = over
	rep.BudgetBytes = rep.TargetBytes - over
	if err := plan.Allocate(rep.BudgetBytes); err != nil {
		minBits := float64(over+plan.MinBytes()) * 8 / float64(params)
		return nil, nil, fmt.Errorf("cannot fit %d bytes (%.3f bits/parameter): the smallest file %s can make here is about %d bytes (%.3f bits/parameter); ask for more, or compress fewer tensors",
			rep.TargetBytes, float64(rep.TargetBytes)*8/float64(params), p.Name(), over+plan.MinBytes(), minBits)
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
	cp := codec.Plan{Configs: plan.Configs(), Importance: plan.Importance, Summary: summary}
	if plan.Estimated {
		// Estimated sizes: each tensor's is its cap, so the payloads
		// stay within the budget whatever the estimates' error.
		cp.Bytes = plan.Allotted()
		rep.notes = make(map[string]string, len(plan.Tensors))
		for _, t := range plan.Tensors {
			rep.notes[t.Info.Name] = estNote(t.Chosen().Dist / t.Weight)
		}
	}
	pc, err := p.Planned(cp)
	if err != nil {
		return nil, nil, err
	}
	return pc, rep, nil
}
