package batch

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

	"github.com/tpconvert/tpconvert/batch/checkout"
	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/internal/atomicdir"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/internal/procstat"
	"github.com/tpconvert/tpconvert/stream"
	"github.com/tpconvert/tpconvert/tensor"
)

// stager puts converted weight files into the staging directory, each
// with a record of its source and settings, so that a killed or sharded
// run resumes where it stopped.
type stager struct {
	*env
	plan *planner
}

func (st *stager) rateOptions() *convert.RateOptions {
	if st.o.BPW > 0 {
		return &convert.RateOptions{BPW: st.o.BPW, SampleRows: st.o.SampleRows}
	}
	return nil
}

// cleanTemps removes the temporary files and directories of killed runs:
// with sharding, only those of this shard (other shards may be running);
// otherwise all of them.
func (st *stager) cleanTemps() {
	prefix := atomicfile.TempPrefix
	if st.o.Shards > 1 && !st.o.Merge {
		prefix += st.tag + "-"
	}
	clean := func(dir string) {
		es, _ := os.ReadDir(dir)
		for _, e := range es {
			if strings.HasPrefix(e.Name(), prefix) {
				os.RemoveAll(filepath.Join(dir, e.Name()))
			}
		}
	}
	clean(st.out)
	es, _ := os.ReadDir(st.staging)
	for _, e := range es {
		if e.IsDir() {
			clean(filepath.Join(st.staging, e.Name()))
		}
	}
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
	atomicdir.SyncDir(dir)
	return nil
}

// unitTemp creates this process's temporary directory for a unit.
func (st *stager) unitTemp(model string) (string, string, error) {
	dir := filepath.Join(st.staging, model)
	// Removed on interrupt only if empty: staged units are kept for a
	// resumed run.
	// Another shard's process removes the staging directory when it finds
	// it empty (finish); if that happens between creating it and creating
	// the unit's directory in it, create both again (bounded).
	var err error
	for range 8 {
		var tmp string
		if _, err = atomicfile.MkdirAll(dir); err == nil {
			if tmp, err = atomicfile.MkdirTemp(dir, atomicfile.TempPrefix+st.tag+"-unit-*"); err == nil {
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
func (st *stager) reuse(mw *modelWork, u Unit) error {
	w := st.plan.reusable(mw, u)
	if w == nil {
		return fmt.Errorf("%s: previous output changed", u.Name())
	}
	dir, tmp, err := st.unitTemp(mw.c.Name)
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := linkOrCopy(st.ctx, filepath.Join(st.out, mw.c.Name, w.Output), filepath.Join(tmp, w.Output)); err != nil {
		return err
	}
	run := mw.prev.run[w.Source]
	if st, err := os.Stat(filepath.Join(mw.c.Dir, w.Source)); err == nil {
		run.SourceMTime = st.ModTime().UnixNano()
	}
	run.Source = w.Source
	rec := unitRecord{Format: unitFormat, Model: mw.c.Name, Settings: st.settings, Weight: *w, Run: run}
	if err := writeJSON(filepath.Join(tmp, "record.json"), rec); err != nil {
		return err
	}
	return stage(tmp, dir, w.Output)
}

// convert compresses one weight file into the staging directory, hashing
// the source while it is converted and the output after.
func (st *stager) convert(c *checkout.Checkout, u Unit) (*unitRecord, error) {
	start := time.Now()
	defer debug.FreeOSMemory() // give the unit's memory back before the next
	dir, tmp, err := st.unitTemp(c.Name)
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	src := filepath.Join(c.Dir, u.Weight.Name)
	st0, err := os.Stat(src)
	if err != nil {
		return nil, err
	}
	hctx, cancel := context.WithCancel(st.ctx)
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
	rep, err := convert.CompressFile(st.ctx, src, out, convert.CompressOptions{
		Options: stream.Options{Workers: st.o.Workers, MaxMemory: st.o.MaxMemory, Progress: func(_ tensor.Info, n int64) {
			done += n
			st.emit(Event{Kind: EventBytes, Bytes: n})
		}},
		Codec:    st.o.Codec,
		Selector: st.o.Selector,
		NoStats:  st.o.NoStats,
		Rate:     st.rateOptions(),

		PassThrough: st.o.PassThrough,
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
		st.emit(Event{Kind: EventBytes, Bytes: rest})
	}
	outSum, err := hashFile(st.ctx, out)
	if err != nil {
		return nil, err
	}
	t := rep.Totals
	rec := &unitRecord{Format: unitFormat, Model: c.Name, Settings: st.settings,
		Weight: ManifestWeight{
			Source: u.Weight.Name, Kind: string(u.Weight.Kind), SourceSize: st0.Size(), SourceSHA256: h.sum,
			Output: u.Weight.Output, OutputSize: t.BytesOut, OutputSHA256: outSum,
			Tensors: t.Tensors, Compressed: t.Compressed, Params: t.Params,
			BPW: t.BPWAll, BPWCompressed: t.BPWCompressed, Version: st.o.Version,
		},
		Run: RunWeight{Source: u.Weight.Name, SourceMTime: st0.ModTime().UnixNano(), Seconds: time.Since(start).Seconds(),
			PeakRSSBytes: procstat.PeakRSS(), Shard: st.shardName(), Host: st.host, Finished: time.Now().UTC().Format(time.RFC3339)},
	}
	if err := writeJSON(filepath.Join(tmp, "record.json"), rec); err != nil {
		return nil, err
	}
	if err := stage(tmp, dir, u.Weight.Output); err != nil {
		return nil, err
	}
	return rec, nil
}
