package convert

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/stream"
	"github.com/tpconvert/tpconvert/tensor"
)

// StagingName is the directory of OUTDIR where converted weight files wait
// until every weight file of their model is converted.
const StagingName = ".tpconvert-parts"

// BatchOptions configure Batch.
type BatchOptions struct {
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
	// (CompressOptions.PassThrough).
	PassThrough codec.ByteCodec
	// BPW, if positive, sizes each weight file to BPW bits per parameter
	// with Codec's rate control (CompressOptions.Rate).
	BPW float64
	// SampleRows is rate control's rows per tensor with BPW
	// (RateOptions.SampleRows; 0: its default).
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
	OnEvent func(BatchEvent)
}

// BatchEventKind says what a BatchEvent reports.
type BatchEventKind int

// The batch events.
const (
	// EventPlanned: Models, Units and Bytes are the work of this process.
	EventPlanned BatchEventKind = iota
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

// BatchEvent reports progress of Batch.
type BatchEvent struct {
	Kind   BatchEventKind
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

// UnitReport is one weight file's line in a BatchReport.
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

// ModelReport is one model's line in a BatchReport.
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

// BatchTotals sums a BatchReport.
type BatchTotals struct {
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

// BatchReport summarises a Batch run. Models lists the models this
// process had work in (every model without sharding, or with Merge).
type BatchReport struct {
	OutDir string        `json:"out_dir"`
	Shard  int           `json:"shard"`
	Shards int           `json:"shards"`
	Merge  bool          `json:"merge,omitempty"`
	Models []ModelReport `json:"models"`
	Notes  []string      `json:"notes,omitempty"`
	Totals BatchTotals   `json:"totals"`
}

// ErrBatch is matched (with errors.Is) by the error Batch returns when
// some models failed, or, with Merge, are incomplete.
var ErrBatch = errors.New("convert: batch incomplete")

// Batch converts every checkout found in srcs (see FindCheckouts) into
// outDir/<model>/: one .tpk file per weight file, named after it, every
// other file copied unchanged, a manifest.json (see Manifest) and a
// run.json (see RunInfo).
//
// Weight files are converted one after another, each by CompressFile under
// the same memory budget, with everything released in between. Each goes
// first to outDir/.tpconvert-parts/<model>/ (atomically, with a record of
// its source and settings); when every weight file of a model is there,
// the model's directory is assembled under a temporary name and renamed
// into place, and its staging directory removed.
//
// Batch resumes: a model whose manifest matches its sources (names, sizes,
// and modification times, or SHA-256 where times differ) and the settings
// is skipped, and so is a staged weight file that matches; temporary files
// of a killed run are removed first. With Shards > 1 only this shard's
// units are converted, and a model is assembled by whichever process
// finds all its weight files converted; Merge completes the rest.
//
// An error converting one model does not stop the others; the returned
// error then wraps ErrBatch. Cancelling ctx stops promptly, leaving only
// complete files (and temporary ones that the next run removes).
func Batch(ctx context.Context, srcs []string, outDir string, o BatchOptions) (*BatchReport, error) {
	start := time.Now()
	if o.Shards == 0 {
		o.Shards = 1
	}
	if o.Shards < 1 || o.Shard < 0 || o.Shard >= o.Shards {
		return nil, fmt.Errorf("convert: batch shard %d/%d out of range (want 0 <= i < n)", o.Shard, o.Shards)
	}
	if o.Codec == nil {
		return nil, errors.New("convert: batch without a codec")
	}
	if len(srcs) == 0 {
		return nil, errors.New("convert: batch without sources")
	}
	cs, notes, err := FindCheckouts(srcs, outDir)
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
	b := &batchRun{
		ctx:      ctx,
		o:        o,
		out:      outDir,
		staging:  filepath.Join(outDir, StagingName),
		tag:      fmt.Sprintf("s%dof%d", o.Shard, o.Shards),
		settings: settingsOf(o),
		hashes:   map[string]string{},
	}
	b.host, _ = os.Hostname()
	if !o.DryRun {
		b.cleanTemps()
	}
	rep := &BatchReport{OutDir: outDir, Shard: o.Shard, Shards: o.Shards, Merge: o.Merge, Notes: notes}
	all := o.Shards == 1 || o.Merge
	units := Units(cs, o.Shards)

	// Plan: decide what each unit of the models this process touches needs.
	var work []*modelWork
	planned := BatchEvent{Kind: EventPlanned}
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
		mw := b.plan(c, us)
		work = append(work, mw)
		planned.Models++
		for _, k := range mw.todo {
			planned.Units++
			planned.Bytes += mw.rep.Units[k].SourceBytes
		}
	}
	b.emit(planned)

	var firstErr error
	for _, mw := range work {
		if o.DryRun {
			if mw.rep.Status == "" {
				mw.rep.Status = ModelPlanned
			}
		} else if mw.rep.Status == "" {
			if err := b.run(mw); err != nil {
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
		b.emit(BatchEvent{Kind: EventModelDone, Model: mw.rep})
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
	t.PeakRSSBytes = PeakRSS()
	if firstErr != nil {
		return rep, fmt.Errorf("%w: %d of %d failed; first: %w", ErrBatch, t.Failed, t.Models, firstErr)
	}
	return rep, nil
}

// checkOutsideSource refuses an output directory that is a checkout or
// holds one. An output inside a checkout is allowed: FindCheckouts skips it.
func checkOutsideSource(out, src string) error {
	a, err1 := filepath.Abs(out)
	b, err2 := filepath.Abs(src)
	if err1 != nil || err2 != nil {
		return nil
	}
	if a == b {
		return fmt.Errorf("refusing to write the batch output into its source %s", src)
	}
	if rel, err := filepath.Rel(a, b); err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return fmt.Errorf("source %s is inside the batch output %s", src, out)
	}
	return nil
}

func settingsOf(o BatchOptions) BatchSettings {
	s := BatchSettings{
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

func (b *batchRun) rateOptions() *RateOptions {
	if b.o.BPW > 0 {
		return &RateOptions{BPW: b.o.BPW, SampleRows: b.o.SampleRows}
	}
	return nil
}

type batchRun struct {
	ctx      context.Context
	o        BatchOptions
	out      string
	staging  string
	tag      string // this process's mark on its temporary names
	settings BatchSettings
	host     string
	hashes   map[string]string // SHA-256 of source files hashed by this run
}

// modelWork is the plan for one model.
type modelWork struct {
	c     *Checkout
	units []Unit
	rep   *ModelReport
	todo  []int // units this process converts
	reuse []int // units taken from the previous output
	prev  *previous
	err   error // a problem found while planning
}

// previous is a model's existing output directory.
type previous struct {
	man *Manifest
	run map[string]RunWeight
	fil map[string]int64 // path -> mtime
}

func (b *batchRun) emit(e BatchEvent) {
	if b.o.OnEvent != nil {
		b.o.OnEvent(e)
	}
}

func (b *batchRun) mine(u Unit) bool {
	return b.o.Shards == 1 || u.Shard == b.o.Shard
}

func (b *batchRun) plan(c *Checkout, us []Unit) *modelWork {
	mr := &ModelReport{Name: c.Name, Source: c.Dir, Output: filepath.Join(b.out, c.Name), Files: len(c.Files)}
	mw := &modelWork{c: c, units: us, rep: mr}
	for _, u := range us {
		mr.Units = append(mr.Units, UnitReport{Model: c.Name, Source: u.Weight.Name, Output: u.Weight.Output,
			Shard: u.Shard, SourceBytes: u.Weight.Size})
		mr.SourceBytes += u.Weight.Size
	}
	prev, why, err := b.previous(c)
	if err != nil {
		mr.Status, mr.Error, mw.err = ModelFailed, oneLine(err), err
		return mw
	}
	mw.prev = prev
	if why == "" && !b.o.Force {
		if !b.o.DryRun && (b.o.Shards == 1 || b.o.Merge) {
			// Left by a run killed after assembling the model.
			os.RemoveAll(filepath.Join(b.staging, c.Name))
			os.Remove(b.staging)
		}
		mr.Status = ModelUpToDate
		for k := range mr.Units {
			mr.Units[k].Status = UnitUpToDate
			mr.Units[k].OutputBytes = prev.man.Weights[k].OutputSize
		}
		mr.OutputBytes = prev.man.Totals.OutputBytes
		mr.BPW = prev.man.Totals.BPW
		return mw
	}
	mr.Reason = why
	if b.o.Force {
		mr.Reason = "--force"
	}
	for k, u := range us {
		ur := &mr.Units[k]
		switch {
		case !b.o.Merge && !b.mine(u):
			ur.Status = UnitPending
		case !b.o.Force && b.staged(c, u) != nil:
			ur.Status = UnitStaged
		case !b.o.Force && b.reusable(mw, u) != nil:
			ur.Status = UnitReused
			mw.reuse = append(mw.reuse, k)
		case b.o.Merge:
			ur.Status = UnitPending
		default:
			ur.Status = UnitToDo
			mw.todo = append(mw.todo, k)
		}
	}
	return mw
}

// run converts and reuses the model's units, then assembles it if every
// unit is ready.
func (b *batchRun) run(mw *modelWork) error {
	start := time.Now()
	defer func() { mw.rep.Seconds = time.Since(start).Seconds() }()
	for _, k := range mw.reuse {
		if err := b.reuse(mw, mw.units[k]); err != nil {
			mw.rep.Units[k].Status, mw.rep.Units[k].Error = UnitFailed, oneLine(err)
			return err
		}
	}
	for _, k := range mw.todo {
		ur := &mw.rep.Units[k]
		b.emit(BatchEvent{Kind: EventUnitStart, Unit: ur})
		rec, err := b.convert(mw.c, mw.units[k])
		if err != nil {
			ur.Status, ur.Error = UnitFailed, oneLine(err)
			if b.ctx.Err() == nil {
				b.emit(BatchEvent{Kind: EventUnitDone, Unit: ur})
			}
			return err
		}
		ur.Status, ur.OutputBytes, ur.BPW, ur.Seconds = UnitConverted, rec.Weight.OutputSize, rec.Weight.BPW, rec.Run.Seconds
		b.emit(BatchEvent{Kind: EventUnitDone, Unit: ur})
	}
	return b.tryAssemble(mw)
}

// cleanTemps removes the temporary files and directories of killed runs:
// with sharding, only those of this shard (other shards may be running);
// otherwise all of them.
func (b *batchRun) cleanTemps() {
	prefix := atomicfile.TempPrefix
	if b.o.Shards > 1 && !b.o.Merge {
		prefix += b.tag + "-"
	}
	clean := func(dir string) {
		es, _ := os.ReadDir(dir)
		for _, e := range es {
			if strings.HasPrefix(e.Name(), prefix) {
				os.RemoveAll(filepath.Join(dir, e.Name()))
			}
		}
	}
	clean(b.out)
	es, _ := os.ReadDir(b.staging)
	for _, e := range es {
		if e.IsDir() {
			clean(filepath.Join(b.staging, e.Name()))
		}
	}
}

// fresh reports whether the file at p still has the recorded size and
// content: a matching modification time is trusted, otherwise the file is
// hashed and compared with the recorded SHA-256.
func (b *batchRun) fresh(p string, size, mtime int64, sha string) bool {
	st, err := os.Stat(p)
	if err != nil || !st.Mode().IsRegular() || st.Size() != size {
		return false
	}
	if mtime != 0 && st.ModTime().UnixNano() == mtime {
		return true
	}
	h, ok := b.hashes[p]
	if !ok {
		if h, err = hashFile(b.ctx, p); err != nil {
			return false
		}
		b.hashes[p] = h
	}
	return h == sha
}

// previous loads the model's existing output and says why it is not up
// to date ("" when it is).
func (b *batchRun) previous(c *Checkout) (*previous, string, error) {
	dir := filepath.Join(b.out, c.Name)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, "not converted yet", nil
	}
	man, err := ReadManifest(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if !b.o.Force && !b.o.DryRun {
				return nil, "", fmt.Errorf("%s exists and is not a converted model (no %s): remove it or use --force", dir, ManifestName)
			}
			return nil, "not a converted model", nil
		}
		return nil, "unreadable manifest", nil
	}
	p := &previous{man: man, run: map[string]RunWeight{}, fil: map[string]int64{}}
	var ri RunInfo
	if readJSON(filepath.Join(dir, RunInfoName), &ri) == nil {
		for _, w := range ri.Weights {
			p.run[w.Source] = w
		}
		for _, f := range ri.Files {
			p.fil[f.Path] = f.MTime
		}
	}
	if man.Settings != b.settings {
		return p, "settings changed", nil
	}
	if len(man.Weights) != len(c.Weights) {
		return p, "weight files changed", nil
	}
	for k, w := range c.Weights {
		mw := man.Weights[k]
		if mw.Source != w.Name || mw.Output != w.Output {
			return p, "weight files changed", nil
		}
		if !b.fresh(filepath.Join(c.Dir, w.Name), mw.SourceSize, p.run[w.Name].SourceMTime, mw.SourceSHA256) {
			return p, w.Name + " changed", nil
		}
		if st, err := os.Stat(filepath.Join(dir, mw.Output)); err != nil || st.Size() != mw.OutputSize {
			return p, mw.Output + " missing or damaged", nil
		}
	}
	if len(man.Files) != len(c.Files) {
		return p, "files changed", nil
	}
	for k, f := range c.Files {
		mf := man.Files[k]
		if mf.Path != f {
			return p, "files changed", nil
		}
		if !b.fresh(filepath.Join(c.Dir, filepath.FromSlash(f)), mf.Size, p.fil[f], mf.SHA256) {
			return p, f + " changed", nil
		}
		if st, err := os.Stat(filepath.Join(dir, filepath.FromSlash(f))); err != nil || st.Size() != mf.Size {
			return p, f + " missing from the output", nil
		}
	}
	return p, "", nil
}

// staged returns the unit's record in the staging directory if it
// matches the source and the settings, nil otherwise.
func (b *batchRun) staged(c *Checkout, u Unit) *unitRecord {
	dir := filepath.Join(b.staging, c.Name)
	var rec unitRecord
	if readJSON(filepath.Join(dir, u.Weight.Output+".json"), &rec) != nil {
		return nil
	}
	w := rec.Weight
	if rec.Format != unitFormat || rec.Model != c.Name || rec.Settings != b.settings ||
		w.Source != u.Weight.Name || w.Output != u.Weight.Output {
		return nil
	}
	if st, err := os.Stat(filepath.Join(dir, w.Output)); err != nil || st.Size() != w.OutputSize {
		return nil
	}
	if !b.fresh(filepath.Join(c.Dir, u.Weight.Name), w.SourceSize, rec.Run.SourceMTime, w.SourceSHA256) {
		return nil
	}
	return &rec
}

// reusable returns the unit's entry in the model's previous output if its
// source and the settings are unchanged.
func (b *batchRun) reusable(mw *modelWork, u Unit) *ManifestWeight {
	p := mw.prev
	if p == nil || p.man.Settings != b.settings {
		return nil
	}
	for k := range p.man.Weights {
		w := &p.man.Weights[k]
		if w.Source != u.Weight.Name || w.Output != u.Weight.Output {
			continue
		}
		st, err := os.Stat(filepath.Join(b.out, mw.c.Name, w.Output))
		if err != nil || st.Size() != w.OutputSize {
			return nil
		}
		if !b.fresh(filepath.Join(mw.c.Dir, u.Weight.Name), w.SourceSize, p.run[w.Source].SourceMTime, w.SourceSHA256) {
			return nil
		}
		return w
	}
	return nil
}

// stage moves a finished unit (its .tpk and record, both in tmp) into the
// staging directory dir: the record goes last, so a record always
// describes a complete file.
func stage(tmp, dir, output string) error {
	final := filepath.Join(dir, output)
	if err := os.Remove(final + ".json"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if err := os.Rename(filepath.Join(tmp, output), final); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(tmp, "record.json"), final+".json"); err != nil {
		return err
	}
	syncDir(dir)
	return nil
}

// unitTemp creates this process's temporary directory for a unit.
func (b *batchRun) unitTemp(model string) (string, string, error) {
	dir := filepath.Join(b.staging, model)
	// Removed on interrupt only if empty: staged units are kept for a
	// resumed run.
	// Another shard's process removes the staging directory when it finds
	// it empty (finish); if that happens between creating it and creating
	// the unit's directory in it, create both again (bounded).
	var err error
	for range 8 {
		var tmp string
		if _, err = atomicfile.MkdirAll(dir); err == nil {
			if tmp, err = atomicfile.MkdirTemp(dir, atomicfile.TempPrefix+b.tag+"-unit-*"); err == nil {
				return dir, tmp, nil
			}
		}
		if !errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	return "", "", err
}

// reuse stages the unit's .tpk file from the model's previous output.
func (b *batchRun) reuse(mw *modelWork, u Unit) error {
	w := b.reusable(mw, u)
	if w == nil {
		return fmt.Errorf("%s: previous output changed", u.Name())
	}
	dir, tmp, err := b.unitTemp(mw.c.Name)
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := linkOrCopy(b.ctx, filepath.Join(b.out, mw.c.Name, w.Output), filepath.Join(tmp, w.Output)); err != nil {
		return err
	}
	run := mw.prev.run[w.Source]
	if st, err := os.Stat(filepath.Join(mw.c.Dir, w.Source)); err == nil {
		run.SourceMTime = st.ModTime().UnixNano()
	}
	run.Source = w.Source
	rec := unitRecord{Format: unitFormat, Model: mw.c.Name, Settings: b.settings, Weight: *w, Run: run}
	if err := writeJSON(filepath.Join(tmp, "record.json"), rec); err != nil {
		return err
	}
	return stage(tmp, dir, w.Output)
}

// convert compresses one weight file into the staging directory, hashing
// the source while it is converted and the output after.
func (b *batchRun) convert(c *Checkout, u Unit) (*unitRecord, error) {
	start := time.Now()
	defer debug.FreeOSMemory() // give the unit's memory back before the next
	dir, tmp, err := b.unitTemp(c.Name)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	src := filepath.Join(c.Dir, u.Weight.Name)
	st0, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	hctx, cancel := context.WithCancel(b.ctx)
	defer cancel()
	type hashed struct {
		sum string
		err error
	}
	hc := make(chan hashed, 1)
	go func() {
		s, err := hashFile(hctx, src)
		hc <- hashed{s, err}
	}()
	var done int64
	out := filepath.Join(tmp, u.Weight.Output)
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil { // inside this unit's temporary directory
		return nil, err
	}
	rep, err := CompressFile(b.ctx, src, out, CompressOptions{
		Options: stream.Options{Workers: b.o.Workers, MaxMemory: b.o.MaxMemory, Progress: func(_ tensor.Info, n int64) {
			done += n
			b.emit(BatchEvent{Kind: EventBytes, Bytes: n})
		}},
		Codec:    b.o.Codec,
		Selector: b.o.Selector,
		NoStats:  b.o.NoStats,
		Rate:     b.rateOptions(),

		PassThrough: b.o.PassThrough,
	})
	if err != nil {
		cancel()
		<-hc
		return nil, err
	}
	h := <-hc
	if h.err != nil {
		return nil, h.err
	}
	st1, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	if st1.Size() != st0.Size() || !st1.ModTime().Equal(st0.ModTime()) {
		return nil, fmt.Errorf("%s changed while it was being converted", src)
	}
	if rest := st0.Size() - done; rest > 0 {
		b.emit(BatchEvent{Kind: EventBytes, Bytes: rest})
	}
	outSum, err := hashFile(b.ctx, out)
	if err != nil {
		return nil, err
	}
	t := rep.Totals
	rec := &unitRecord{Format: unitFormat, Model: c.Name, Settings: b.settings,
		Weight: ManifestWeight{
			Source: u.Weight.Name, Kind: string(u.Weight.Kind), SourceSize: st0.Size(), SourceSHA256: h.sum,
			Output: u.Weight.Output, OutputSize: t.BytesOut, OutputSHA256: outSum,
			Tensors: t.Tensors, Compressed: t.Compressed, Params: t.Params,
			BPW: t.BPWAll, BPWCompressed: t.BPWCompressed, Version: b.o.Version,
		},
		Run: RunWeight{Source: u.Weight.Name, SourceMTime: st0.ModTime().UnixNano(), Seconds: time.Since(start).Seconds(),
			PeakRSSBytes: PeakRSS(), Shard: b.shardName(), Host: b.host, Finished: time.Now().UTC().Format(time.RFC3339)},
	}
	if err := writeJSON(filepath.Join(tmp, "record.json"), rec); err != nil {
		return nil, err
	}
	if err := stage(tmp, dir, u.Weight.Output); err != nil {
		return nil, err
	}
	return rec, nil
}

func (b *batchRun) shardName() string { return fmt.Sprintf("%d/%d", b.o.Shard, b.o.Shards) }

// tryAssemble builds the model's directory if every unit is staged.
func (b *batchRun) tryAssemble(mw *modelWork) error {
	recs := make([]*unitRecord, len(mw.units))
	var missing []string
	for k, u := range mw.units {
		if recs[k] = b.staged(mw.c, u); recs[k] == nil {
			if b.o.Shards > 1 {
				missing = append(missing, fmt.Sprintf("%s (shard %d/%d)", u.Weight.Name, u.Shard, b.o.Shards))
			} else {
				missing = append(missing, u.Weight.Name)
			}
			continue
		}
		if ur := &mw.rep.Units[k]; ur.Status == UnitPending {
			ur.Status = UnitStaged
		}
	}
	if len(missing) > 0 {
		mw.rep.Status = ModelWaiting
		if b.o.Merge {
			mw.rep.Status = ModelIncomplete
		}
		mw.rep.Reason = fmt.Sprintf("%d of %d weight files converted; missing %s", len(mw.units)-len(missing), len(mw.units), strings.Join(missing, ", "))
		return nil
	}
	if err := b.assemble(mw, recs); err != nil {
		return err
	}
	mw.rep.Status = ModelConverted
	return nil
}

// assemble writes the model's directory from its staged units and its
// copied files, and renames it into place.
func (b *batchRun) assemble(mw *modelWork, recs []*unitRecord) (err error) {
	c := mw.c
	tmp, err := atomicfile.MkdirTemp(b.out, atomicfile.TempPrefix+b.tag+"-model-*")
	if err != nil {
		return err
	}
	defer func() {
		if tmp != "" {
			os.RemoveAll(tmp)
		}
	}()
	man := Manifest{Format: ManifestFormat, FormatVersion: ManifestFormatVersion, Model: c.Name, Version: b.o.Version,
		Settings: b.settings, Weights: []ManifestWeight{}, Files: []ManifestFile{}}
	run := RunInfo{Model: c.Name, Shard: b.shardName(), Host: b.host, Weights: []RunWeight{}, Files: []RunFile{}}
	stagingDir := filepath.Join(b.staging, c.Name)
	t := &man.Totals
	for _, r := range recs {
		if err := linkOrCopy(b.ctx, filepath.Join(stagingDir, r.Weight.Output), filepath.Join(tmp, r.Weight.Output)); err != nil {
			return b.raced(mw, err)
		}
		man.Weights = append(man.Weights, r.Weight)
		run.Weights = append(run.Weights, r.Run)
		t.SourceBytes += r.Weight.SourceSize
		t.OutputBytes += r.Weight.OutputSize
		t.Params += r.Weight.Params
	}
	for _, f := range c.Files {
		src := filepath.Join(c.Dir, filepath.FromSlash(f))
		st, err := os.Stat(src)
		if err != nil {
			return err
		}
		n, sum, err := copyFile(b.ctx, src, filepath.Join(tmp, filepath.FromSlash(f)))
		if err != nil {
			return err
		}
		if n != st.Size() {
			return fmt.Errorf("%s changed while it was being copied", src)
		}
		man.Files = append(man.Files, ManifestFile{Path: f, Size: n, SHA256: sum})
		run.Files = append(run.Files, RunFile{Path: f, MTime: st.ModTime().UnixNano()})
		t.FileBytes += n
	}
	if t.Params > 0 {
		t.BPW = float64(t.OutputBytes) * 8 / float64(t.Params)
	}
	if t.OutputBytes > 0 {
		t.RatioSource = float64(t.SourceBytes) / float64(t.OutputBytes)
	}
	run.Assembled = time.Now().UTC().Format(time.RFC3339)
	if err := writeJSON(filepath.Join(tmp, ManifestName), man); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(tmp, RunInfoName), run); err != nil {
		return err
	}
	// MkdirTemp made it private; outputs are ordinary directories.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	syncDir(tmp)
	if err := b.ctx.Err(); err != nil {
		return err
	}
	final := filepath.Join(b.out, c.Name)
	old := ""
	if _, err := os.Lstat(final); err == nil {
		// Move the previous output aside, then put the new one in its
		// place.
		if old, err = freshName(b.out, atomicfile.TempPrefix+b.tag+"-old-*"); err != nil {
			return err
		}
		if err := os.Rename(final, old); err != nil {
			return b.raced(mw, err)
		}
	}
	if err := os.Rename(tmp, final); err != nil {
		if old != "" {
			os.Rename(old, final)
		}
		return b.raced(mw, err)
	}
	tmp = ""
	syncDir(b.out)
	if old != "" {
		os.RemoveAll(old)
	}
	os.RemoveAll(stagingDir)
	os.Remove(b.staging) // only when empty
	mw.rep.OutputBytes, mw.rep.BPW = t.OutputBytes, t.BPW
	for k := range mw.rep.Units {
		if mw.rep.Units[k].OutputBytes == 0 {
			mw.rep.Units[k].OutputBytes = recs[k].Weight.OutputSize
			mw.rep.Units[k].BPW = recs[k].Weight.BPW
		}
	}
	return nil
}

// raced handles a failed step of assemble: when another process has
// meanwhile completed the model, that is success.
func (b *batchRun) raced(mw *modelWork, err error) error {
	if _, why, perr := b.previous(mw.c); perr == nil && why == "" {
		return nil
	}
	return err
}

// freshName returns an unused path in dir whose name follows pattern (as
// os.MkdirTemp's), to rename a directory to.
func freshName(dir, pattern string) (string, error) {
	p, err := os.MkdirTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	return p, os.Remove(p)
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }
