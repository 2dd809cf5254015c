package batch

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/tpconvert/tpconvert/batch/checkout"
)

// ErrNotConverted is matched (with errors.Is) by the error for a model
// whose output directory exists but was not written by Run (it has no
// manifest); Options.Force replaces it.
var ErrNotConverted = errors.New("is not a converted model")

// planner decides, for each model, what its units need: nothing (the
// model is up to date), staging from the previous output, or converting.
type planner struct {
	*env
	src *sources
}

// sources checks whether source and output files are unchanged since
// they were recorded, hashing each file at most once per run.
type sources struct {
	ctx    context.Context
	hashes map[string]string // SHA-256 of the files hashed so far
}

// modelWork is the plan for one model.
type modelWork struct {
	c     *checkout.Checkout
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

func (p *planner) mine(u Unit) bool {
	return p.o.Shards == 1 || u.Shard == p.o.Shard
}

func (p *planner) plan(c *checkout.Checkout, us []Unit) *modelWork {
	mr := &ModelReport{Name: c.Name, Source: c.Dir, Output: filepath.Join(p.out, c.Name), Files: len(c.Files)}
	mw := &modelWork{c: c, units: us, rep: mr}
	for _, u := range us {
		mr.Units = append(mr.Units, UnitReport{Model: c.Name, Source: u.Weight.Name, Output: u.Weight.Output,
			Shard: u.Shard, SourceBytes: u.Weight.Size})
		mr.SourceBytes += u.Weight.Size
	}
	prev, why, err := p.previous(c)
	if err != nil {
		mr.Status, mr.Error, mw.err = ModelFailed, oneLine(err), err
		return mw
	}
	mw.prev = prev
	if why == "" && !p.o.Force {
		if !p.o.DryRun && (p.o.Shards == 1 || p.o.Merge) {
			// Left by a run killed after assembling the model.
			os.RemoveAll(filepath.Join(p.staging, c.Name))
			os.Remove(p.staging)
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
	if p.o.Force {
		mr.Reason = "forced"
	}
	for k, u := range us {
		ur := &mr.Units[k]
		switch {
		case !p.o.Merge && !p.mine(u):
			ur.Status = UnitPending
		case !p.o.Force && p.staged(c, u) != nil:
			ur.Status = UnitStaged
		case !p.o.Force && p.reusable(mw, u) != nil:
			ur.Status = UnitReused
			mw.reuse = append(mw.reuse, k)
		case p.o.Merge:
			ur.Status = UnitPending
		default:
			ur.Status = UnitToDo
			mw.todo = append(mw.todo, k)
		}
	}
	return mw
}

// fresh reports whether the file at p still has the recorded size and
// content: a matching modification time is trusted, otherwise the file is
// hashed and compared with the recorded SHA-256.
func (s *sources) fresh(p string, size, mtime int64, sha string) bool {
	st, err := os.Stat(p)
	if err != nil || !st.Mode().IsRegular() || st.Size() != size {
		return false
	}
	if mtime != 0 && st.ModTime().UnixNano() == mtime {
		return true
	}
	h, ok := s.hashes[p]
	if !ok {
		if h, err = hashFile(s.ctx, p); err != nil {
			return false
		}
		s.hashes[p] = h
	}
	return h == sha
}

// previous loads the model's existing output and says why it is not up
// to date ("" when it is).
func (p *planner) previous(c *checkout.Checkout) (*previous, string, error) {
	dir := filepath.Join(p.out, c.Name)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, "not converted yet", nil
	}
	man, err := ReadManifest(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if !p.o.Force && !p.o.DryRun {
				return nil, "", fmt.Errorf("%s exists and %w (no %s)", dir, ErrNotConverted, ManifestName)
			}
			return nil, "not a converted model", nil
		}
		return nil, "unreadable manifest", nil
	}
	pr := &previous{man: man, run: map[string]RunWeight{}, fil: map[string]int64{}}
	var ri RunInfo
	if readJSON(filepath.Join(dir, RunInfoName), &ri) == nil {
		for _, w := range ri.Weights {
			pr.run[w.Source] = w
		}
		for _, f := range ri.Files {
			pr.fil[f.Path] = f.MTime
		}
	}
	if man.Settings != p.settings {
		return pr, "settings changed", nil
	}
	if len(man.Weights) != len(c.Weights) {
		return pr, "weight files changed", nil
	}
	for k, w := range c.Weights {
		mw := man.Weights[k]
		if mw.Source != w.Name || mw.Output != w.Output {
			return pr, "weight files changed", nil
		}
		if !p.src.fresh(filepath.Join(c.Dir, w.Name), mw.SourceSize, pr.run[w.Name].SourceMTime, mw.SourceSHA256) {
			return pr, w.Name + " changed", nil
		}
		if st, err := os.Stat(filepath.Join(dir, mw.Output)); err != nil || st.Size() != mw.OutputSize {
			return pr, mw.Output + " missing or damaged", nil
		}
	}
	if len(man.Files) != len(c.Files) {
		return pr, "files changed", nil
	}
	for k, f := range c.Files {
		mf := man.Files[k]
		if mf.Path != f {
			return pr, "files changed", nil
		}
		if !p.src.fresh(filepath.Join(c.Dir, filepath.FromSlash(f)), mf.Size, pr.fil[f], mf.SHA256) {
			return pr, f + " changed", nil
		}
		if st, err := os.Stat(filepath.Join(dir, filepath.FromSlash(f))); err != nil || st.Size() != mf.Size {
			return pr, f + " missing from the output", nil
		}
	}
	return pr, "", nil
}

// staged returns the unit's record in the staging directory if it
// matches the source and the settings, nil otherwise.
func (p *planner) staged(c *checkout.Checkout, u Unit) *unitRecord {
	dir := filepath.Join(p.staging, c.Name)
	var rec unitRecord
	if readJSON(filepath.Join(dir, u.Weight.Output+".json"), &rec) != nil {
		return nil
	}
	w := rec.Weight
	if rec.Format != unitFormat || rec.Model != c.Name || rec.Settings != p.settings ||
		w.Source != u.Weight.Name || w.Output != u.Weight.Output {
		return nil
	}
	if st, err := os.Stat(filepath.Join(dir, w.Output)); err != nil || st.Size() != w.OutputSize {
		return nil
	}
	if !p.src.fresh(filepath.Join(c.Dir, u.Weight.Name), w.SourceSize, rec.Run.SourceMTime, w.SourceSHA256) {
		return nil
	}
	return &rec
}

// reusable returns the unit's entry in the model's previous output if its
// source and the settings are unchanged.
func (p *planner) reusable(mw *modelWork, u Unit) *ManifestWeight {
	pr := mw.prev
	if pr == nil || pr.man.Settings != p.settings {
		return nil
	}
	for k := range pr.man.Weights {
		w := &pr.man.Weights[k]
		if w.Source != u.Weight.Name || w.Output != u.Weight.Output {
			continue
		}
		st, err := os.Stat(filepath.Join(p.out, mw.c.Name, w.Output))
		if err != nil || st.Size() != w.OutputSize {
			return nil
		}
		if !p.src.fresh(filepath.Join(mw.c.Dir, u.Weight.Name), w.SourceSize, pr.run[w.Source].SourceMTime, w.SourceSHA256) {
			return nil
		}
		return w
	}
	return nil
}
