// Package batch converts many checkouts at once: one .tpk file per weight
// file, every other file copied, a manifest per model. Runs resume where a
// killed one stopped and can be split into shards that run on several
// machines (Run); RestoreDir turns the result back into checkouts.
//
// A run has one part per job: package checkout finds the models, Units
// assigns their weight files to shards, a planner decides what each model
// needs, a stager converts weight files into the staging directory, and
// an assembler builds each model's directory and swaps it into place.
package batch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tpconvert/tpconvert/batch/checkout"
	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/internal/procstat"
	"github.com/tpconvert/tpconvert/stream"
)

// StagingName is the directory of OUTDIR where converted weight files wait
// until every weight file of their model is converted.
const StagingName = ".tpconvert-parts"

// Options configure Run.
type Options struct {
	// Workers and MaxMemory apply to each weight file, converted one
	// after another, so they bound the whole batch. Progress is not used
	// (see OnEvent).
	stream.Options
	// Codec compresses the selected tensors. Required, also with Merge
	// (the settings must match those of the converting runs).
	Codec codec.Codec
	// CodecOptions are the options Codec was created with; they are
	// recorded in the manifests.
	CodecOptions codec.Options
	// Selector chooses the tensors to compress.
	Selector stream.Selector
	// NoStats skips measuring reconstruction error.
	NoStats bool
	// PassThrough stores the tensors Codec leaves alone
	// (convert.CompressOptions.PassThrough).
	PassThrough codec.ByteCodec
	// BPW, if positive, sizes each weight file to BPW bits per parameter
	// with Codec's rate control (convert.CompressOptions.Rate).
	BPW float64
	// SampleRows is rate control's rows per tensor with BPW
	// (convert.RateOptions.SampleRows; 0: its default).
	SampleRows int
	// Shard and Shards select the units this process converts: those
	// Units assigns to shard Shard (0 <= Shard < Shards). Shards 0 means 1.
	Shard, Shards int
	// Force converts this process's units again and rebuilds the models
	// it touches, even when they are up to date.
	Force bool
	// Merge converts nothing: it completes every model whose weight files
	// are all converted and fails naming the weight files still missing
	// (with the shard of Shards that owns each; Shard is ignored).
	Merge bool
	// DryRun plans and reports without writing anything.
	DryRun bool
	// Version is the tpconvert version recorded in manifests.
	Version string
	// OnEvent, if set, receives progress. Calls never overlap.
	OnEvent func(Event)
}

// EventKind says what a Event reports.
type EventKind int

// The batch events.
const (
	// EventPlanned: Models, Units and Bytes are the work of this process.
	EventPlanned EventKind = iota
	// EventUnitStart: Unit is about to be converted.
	EventUnitStart
	// EventBytes: Bytes more source bytes were processed.
	EventBytes
	// EventUnitDone: Unit was converted, or failed (other than by
	// cancellation).
	EventUnitDone
	// EventModelDone: Model is finished for this process.
	EventModelDone
)

// Event reports progress of Run.
type Event struct {
	Kind   EventKind
	Models int
	Units  int
	Bytes  int64
	Unit   *UnitReport
	Model  *ModelReport
}

// UnitStatus is what became of one weight file.
type UnitStatus string

// The unit statuses.
const (
	UnitConverted UnitStatus = "converted"  // converted by this run
	UnitReused    UnitStatus = "reused"     // taken from the model's previous output
	UnitStaged    UnitStatus = "staged"     // converted by an earlier or another run
	UnitUpToDate  UnitStatus = "up to date" // the model is complete and current
	UnitPending   UnitStatus = "pending"    // to be converted by another shard
	UnitToDo      UnitStatus = "to do"      // would be converted (DryRun)
	UnitFailed    UnitStatus = "failed"
)

// ModelStatus is what became of one model.
type ModelStatus string

// The model statuses.
const (
	ModelConverted  ModelStatus = "converted"  // its directory was (re)built by this run
	ModelUpToDate   ModelStatus = "up to date" // nothing to do
	ModelWaiting    ModelStatus = "waiting"    // weight files of other shards are missing
	ModelIncomplete ModelStatus = "incomplete" // Merge found weight files missing
	ModelPlanned    ModelStatus = "planned"    // DryRun
	ModelFailed     ModelStatus = "failed"
)

// UnitReport is one weight file's line in a Report.
type UnitReport struct {
	Model       string     `json:"model"`
	Source      string     `json:"source"`
	Output      string     `json:"output"`
	Shard       int        `json:"shard"`
	Status      UnitStatus `json:"status"`
	SourceBytes int64      `json:"source_bytes"`
	OutputBytes int64      `json:"output_bytes,omitempty"`
	BPW         float64    `json:"bpw,omitempty"`
	Seconds     float64    `json:"seconds,omitempty"`
	Error       string     `json:"error,omitempty"`
}

// ModelReport is one model's line in a Report.
type ModelReport struct {
	Name   string      `json:"name"`
	Source string      `json:"source"`
	Output string      `json:"output"`
	Status ModelStatus `json:"status"`
	// Reason says why a model is converted again, or what it waits for.
	Reason      string       `json:"reason,omitempty"`
	Units       []UnitReport `json:"units"`
	Files       int          `json:"files"`
	SourceBytes int64        `json:"source_bytes"`
	OutputBytes int64        `json:"output_bytes,omitempty"`
	BPW         float64      `json:"bpw,omitempty"`
	Seconds     float64      `json:"seconds,omitempty"`
	Error       string       `json:"error,omitempty"`
}

// Totals sums a Report.
type Totals struct {
	Models         int     `json:"models"`
	Converted      int     `json:"converted"`
	UpToDate       int     `json:"up_to_date"`
	Waiting        int     `json:"waiting"`
	Failed         int     `json:"failed"`
	UnitsConverted int     `json:"units_converted"`
	BytesIn        int64   `json:"bytes_in"`
	BytesOut       int64   `json:"bytes_out"`
	WallSeconds    float64 `json:"wall_seconds"`
	PeakRSSBytes   int64   `json:"peak_rss_bytes"`
}

// Report summarises a run of Run. Models lists the models this
// process had work in (every model without sharding, or with Merge).
type Report struct {
	OutDir string        `json:"out_dir"`
	Shard  int           `json:"shard"`
	Shards int           `json:"shards"`
	Merge  bool          `json:"merge,omitempty"`
	Models []ModelReport `json:"models"`
	Notes  []string      `json:"notes,omitempty"`
	Totals Totals        `json:"totals"`
}

// ErrIncomplete is matched (with errors.Is) by the error Run returns when
// some models failed, or, with Merge, are incomplete.
var ErrIncomplete = errors.New("batch: incomplete")

// Run converts every checkout found in srcs (see checkout.Find) into
// outDir/<model>/: one .tpk file per weight file, named after it, every
// other file copied unchanged, a manifest.json (see Manifest) and a
// run.json (see RunInfo).
//
// Weight files are converted one after another, each by convert.CompressFile under
// the same memory budget, with everything released in between. Each goes
// first to outDir/.tpconvert-parts/<model>/ (atomically, with a record of
// its source and settings); when every weight file of a model is there,
// the model's directory is assembled under a temporary name and renamed
// into place, and its staging directory removed.
//
// Run resumes: a model whose manifest matches its sources (names, sizes,
// and modification times, or SHA-256 where times differ) and the settings
// is skipped, and so is a staged weight file that matches; temporary files
// of a killed run are removed first. With Shards > 1 only this shard's
// units are converted, and a model is assembled by whichever process
// finds all its weight files converted; Merge completes the rest.
//
// An error converting one model does not stop the others; the returned
// error then wraps ErrIncomplete. Cancelling ctx stops promptly, leaving only
// complete files (and temporary ones that the next run removes).
func Run(ctx context.Context, srcs []string, outDir string, o Options) (*Report, error) {
	start := time.Now()
	if o.Shards == 0 {
		o.Shards = 1
	}
	if o.Shards < 1 || o.Shard < 0 || o.Shard >= o.Shards {
		return nil, fmt.Errorf("batch: shard %d/%d out of range (want 0 <= i < n)", o.Shard, o.Shards)
	}
	if o.Codec == nil {
		return nil, errors.New("batch: no codec")
	}
	if len(srcs) == 0 {
		return nil, errors.New("batch: no sources")
	}
	cs, notes, err := checkout.Find(srcs, outDir)
	if err != nil {
		return nil, err
	}
	for _, c := range cs {
		if err := checkOutsideSource(outDir, c.Dir); err != nil {
			return nil, err
		}
	}
	// Created only once there is something to convert: a batch that finds
	// no model leaves no empty output directory, and an interrupted one
	// removes it again if it is still empty.
	if !o.DryRun {
		if _, err := atomicfile.MkdirAll(outDir); err != nil {
			return nil, err
		}
	}
	e := &env{
		ctx:      ctx,
		o:        o,
		out:      outDir,
		staging:  filepath.Join(outDir, StagingName),
		tag:      fmt.Sprintf("s%dof%d", o.Shard, o.Shards),
		settings: settingsOf(o),
	}
	e.host, _ = os.Hostname()
	srcCheck := &sources{ctx: ctx, hashes: map[string]string{}}
	p := &planner{env: e, src: srcCheck}
	st := &stager{env: e, plan: p}
	asm := &assembler{env: e, plan: p}
	if !o.DryRun {
		st.cleanTemps()
	}
	rep := &Report{OutDir: outDir, Shard: o.Shard, Shards: o.Shards, Merge: o.Merge, Notes: notes}
	all := o.Shards == 1 || o.Merge
	units := Units(cs, o.Shards)

	// Plan: decide what each unit of the models this process touches needs.
	var work []*modelWork
	planned := Event{Kind: EventPlanned}
	for i := range cs {
		c := &cs[i]
		var us []Unit
		mine := all
		for _, u := range units {
			if u.Model == c.Name {
				us = append(us, u)
				mine = mine || u.Shard == o.Shard
			}
		}
		if !mine {
			continue
		}
		mw := p.plan(c, us)
		work = append(work, mw)
		planned.Models++
		for _, k := range mw.todo {
			planned.Units++
			planned.Bytes += mw.rep.Units[k].SourceBytes
		}
	}
	e.emit(planned)

	var firstErr error
	for _, mw := range work {
		if o.DryRun {
			if mw.rep.Status == "" {
				mw.rep.Status = ModelPlanned
			}
		} else if mw.rep.Status == "" {
			if err := convertModel(e, st, asm, mw); err != nil {
				if ctx.Err() != nil {
					return rep, ctx.Err()
				}
				mw.rep.Status, mw.rep.Error, mw.err = ModelFailed, oneLine(err), err
			}
		}
		if mw.err != nil && firstErr == nil {
			firstErr = fmt.Errorf("model %s: %w", mw.c.Name, mw.err)
		}
		if mw.rep.Status == ModelIncomplete && firstErr == nil {
			firstErr = fmt.Errorf("model %s: %s", mw.c.Name, mw.rep.Reason)
		}
		rep.Models = append(rep.Models, *mw.rep)
		e.emit(Event{Kind: EventModelDone, Model: mw.rep})
	}

	t := &rep.Totals
	for _, m := range rep.Models {
		t.Models++
		switch m.Status {
		case ModelConverted:
			t.Converted++
		case ModelUpToDate:
			t.UpToDate++
		case ModelWaiting:
			t.Waiting++
		case ModelFailed, ModelIncomplete:
			t.Failed++
		}
		for _, u := range m.Units {
			if u.Status == UnitConverted {
				t.UnitsConverted++
				t.BytesIn += u.SourceBytes
				t.BytesOut += u.OutputBytes
			}
		}
	}
	t.WallSeconds = time.Since(start).Seconds()
	t.PeakRSSBytes = procstat.PeakRSS()
	if firstErr != nil {
		return rep, fmt.Errorf("%w: %d of %d failed; first: %w", ErrIncomplete, t.Failed, t.Models, firstErr)
	}
	return rep, nil
}

// checkOutsideSource refuses an output directory that is a checkout or
// holds one. An output inside a checkout is allowed: checkout.Find skips it.
func checkOutsideSource(out, src string) error {
	a, b, ok := absPaths(out, src)
	switch {
	case !ok:
		return nil
	case a == b:
		return fmt.Errorf("refusing to write the batch output into its source %s", src)
	case within(b, a):
		return fmt.Errorf("source %s is inside the batch output %s", src, out)
	}
	return nil
}

// absPaths returns the absolute forms of x and y, and whether both have
// one.
func absPaths(x, y string) (string, string, bool) {
	a, err1 := filepath.Abs(x)
	b, err2 := filepath.Abs(y)
	return a, b, err1 == nil && err2 == nil
}

// within reports whether the absolute path x is y or inside y.
func within(x, y string) bool {
	rel, err := filepath.Rel(y, x)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

func settingsOf(o Options) Settings {
	s := Settings{
		Codec:        o.Codec.Name(),
		CodecVersion: o.Codec.Version(),
		Params:       o.Codec.Params(),
		Rank:         o.CodecOptions.Rank,
		GroupSize:    o.CodecOptions.GroupSize,
		Seed:         o.CodecOptions.Seed,
		Layers:       string(o.Selector.Layers),
		NoStats:      o.NoStats,
		BPW:          o.BPW,
	}
	if o.BPW > 0 {
		s.SampleRows = o.SampleRows
	}
	if o.Selector.Include != nil {
		s.Include = o.Selector.Include.String()
	}
	if o.Selector.Exclude != nil {
		s.Exclude = o.Selector.Exclude.String()
	}
	return s
}

// env is what every step of a run shares: its options and where it
// writes.
type env struct {
	ctx      context.Context
	o        Options
	out      string
	staging  string
	tag      string // this process's mark on its temporary names
	settings Settings
	host     string
}

func (e *env) emit(ev Event) {
	if e.o.OnEvent != nil {
		e.o.OnEvent(ev)
	}
}

func (e *env) shardName() string { return fmt.Sprintf("%d/%d", e.o.Shard, e.o.Shards) }

// convertModel stages the model's units (reused or converted), then
// assembles it if every unit is ready.
func convertModel(e *env, st *stager, asm *assembler, mw *modelWork) error {
	start := time.Now()
	defer func() { mw.rep.Seconds = time.Since(start).Seconds() }()
	for _, k := range mw.reuse {
		if err := st.reuse(mw, mw.units[k]); err != nil {
			mw.rep.Units[k].Status, mw.rep.Units[k].Error = UnitFailed, oneLine(err)
			return err
		}
	}
	for _, k := range mw.todo {
		ur := &mw.rep.Units[k]
		e.emit(Event{Kind: EventUnitStart, Unit: ur})
		rec, err := st.convert(mw.c, mw.units[k])
		if err != nil {
			ur.Status, ur.Error = UnitFailed, oneLine(err)
			if e.ctx.Err() == nil {
				e.emit(Event{Kind: EventUnitDone, Unit: ur})
			}
			return err
		}
		ur.Status, ur.OutputBytes, ur.BPW, ur.Seconds = UnitConverted, rec.Weight.OutputSize, rec.Weight.BPW, rec.Run.Seconds
		e.emit(Event{Kind: EventUnitDone, Unit: ur})
	}
	return asm.tryAssemble(mw)
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }
