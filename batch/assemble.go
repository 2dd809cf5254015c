package batch

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tpconvert/tpconvert/internal/atomicdir"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
)

// assembler builds a model's output directory from its staged units and
// the checkout's other files, and swaps it into place.
type assembler struct {
	*env
	plan *planner
}

// tryAssemble builds the model's directory if every unit is staged.
func (a *assembler) tryAssemble(mw *modelWork) error {
	recs := make([]*unitRecord, len(mw.units))
	var missing []string
	for k, u := range mw.units {
		if recs[k] = a.plan.staged(mw.c, u); recs[k] == nil {
			if a.o.Shards > 1 {
				missing = append(missing, fmt.Sprintf("%s (shard %d/%d)", u.Weight.Name, u.Shard, a.o.Shards))
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
		if a.o.Merge {
			mw.rep.Status = ModelIncomplete
		}
		mw.rep.Reason = fmt.Sprintf("%d of %d weight files converted; missing %s", len(mw.units)-len(missing), len(mw.units), strings.Join(missing, ", "))
		return nil
	}
	if err := a.assemble(mw, recs); err != nil {
		return err
	}
	mw.rep.Status = ModelConverted
	return nil
}

// assemble writes the model's directory from its staged units and its
// copied files, and renames it into place.
func (a *assembler) assemble(mw *modelWork, recs []*unitRecord) (err error) {
	c := mw.c
	tmp, err := atomicdir.Temp(a.out, atomicfile.TempPrefix+a.tag+"-model-*")
	if err != nil {
		return err
	}
	defer func() {
		if tmp != "" {
			os.RemoveAll(tmp)
		}
	}()
	man := Manifest{Format: ManifestFormat, FormatVersion: ManifestFormatVersion, Model: c.Name, Version: a.o.Version,
		Settings: a.settings, Weights: []ManifestWeight{}, Files: []ManifestFile{}}
	run := RunInfo{Model: c.Name, Shard: a.shardName(), Host: a.host, Weights: []RunWeight{}, Files: []RunFile{}}
	stagingDir := filepath.Join(a.staging, c.Name)
	t := &man.Totals
	for _, r := range recs {
		if err := linkOrCopy(a.ctx, filepath.Join(stagingDir, r.Weight.Output), filepath.Join(tmp, r.Weight.Output)); err != nil {
			return a.raced(mw, err)
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
		n, sum, err := copyFile(a.ctx, src, filepath.Join(tmp, filepath.FromSlash(f)))
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
	if err := a.ctx.Err(); err != nil {
		return err
	}
	// The previous output, if any, is moved aside and removed.
	final := filepath.Join(a.out, c.Name)
	if err := atomicdir.SwapDir(tmp, final, atomicfile.TempPrefix+a.tag+"-old-*", true); err != nil {
		return a.raced(mw, err)
	}
	tmp = ""
	os.RemoveAll(stagingDir)
	os.Remove(a.staging) // only when empty
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
func (a *assembler) raced(mw *modelWork, err error) error {
	if _, why, perr := a.plan.previous(mw.c); perr == nil && why == "" {
		return nil
	}
	return err
}
