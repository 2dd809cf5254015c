package batch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tpconvert/tpconvert/batch/checkout"
	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/formats/safetensors"
	"github.com/tpconvert/tpconvert/internal/atomicdir"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/internal/procstat"
)

// IsConvertedDir reports whether dir is a model directory written by
// Run (it holds a manifest.json), or a batch output directory whose
// subdirectories are.
func IsConvertedDir(dir string) bool {
	if _, err := os.Stat(filepath.Join(dir, ManifestName)); err == nil {
		return true
	}
	ms, _ := convertedModels(dir)
	return len(ms) > 0
}

// convertedModels lists the subdirectories of dir that hold a manifest.
func convertedModels(dir string) ([]string, error) {
	es, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range es {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if st, err := os.Stat(filepath.Join(dir, e.Name(), ManifestName)); err == nil && st.Mode().IsRegular() {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// ErrKeepsContainers is returned by RestoreDir when asked for another
// container or for resharding (RestoreOptions.To, ShardSize).
var ErrKeepsContainers = errors.New("restoring a converted directory keeps its files and containers: the output container and shard size cannot be chosen")

// RestoredModel describes one restored checkout.
type RestoredModel struct {
	Model   string                   `json:"model"`
	Output  string                   `json:"output"`
	Weights []*convert.RestoreReport `json:"weights"`
	Files   int                      `json:"files"`
	// Indexes lists the index files whose total_size was updated because
	// restored weight files changed size (restore --dtype).
	Indexes  []string `json:"indexes_updated,omitempty"`
	BytesOut int64    `json:"bytes_out"`
}

// RestoreDirReport summarises RestoreDir.
type RestoreDirReport struct {
	Input        string          `json:"input"`
	Output       string          `json:"output"`
	Models       []RestoredModel `json:"models"`
	BytesOut     int64           `json:"bytes_out"`
	WallSeconds  float64         `json:"wall_seconds"`
	PeakRSSBytes int64           `json:"peak_rss_bytes"`
}

// RestoreDir rebuilds the checkout that Run converted into the model
// directory in (the one holding manifest.json) as the directory out: every
// .tpk file restored to its weight file's original name by
// convert.RestoreFile,
// every other file copied and checked against the manifest's SHA-256, and
// the total_size of a *.safetensors.index.json updated when restored
// weight files changed size (--dtype). When in is a batch output directory
// instead, each of its models is restored to out/<model>.
//
// Each model is written to a temporary directory beside its output and
// renamed into place when complete; one left by a killed restore of the
// same output is removed. o.To and o.ShardSize do not apply.
func RestoreDir(ctx context.Context, in, out string, o convert.RestoreOptions) (*RestoreDirReport, error) {
	start := time.Now()
	if o.To != "" || o.ShardSize != 0 {
		return nil, ErrKeepsContainers
	}
	if err := checkDisjoint(in, out); err != nil {
		return nil, err
	}
	rep := &RestoreDirReport{Input: in, Output: out}
	type job struct{ in, out string }
	var jobs []job
	if _, err := os.Stat(filepath.Join(in, ManifestName)); err == nil {
		jobs = append(jobs, job{in, out})
	} else {
		ms, err := convertedModels(in)
		if err != nil {
			return nil, err
		}
		if len(ms) == 0 {
			return nil, fmt.Errorf("%s holds no %s and no model directories with one (not written by 'tpconvert batch')", in, ManifestName)
		}
		for _, m := range ms {
			jobs = append(jobs, job{filepath.Join(in, m), filepath.Join(out, m)})
		}
	}
	mans := make([]*Manifest, len(jobs))
	var total int64
	for i, j := range jobs {
		if err := checkDisjoint(j.in, j.out); err != nil {
			return nil, err
		}
		m, err := ReadManifest(j.in)
		if err != nil {
			return nil, err
		}
		mans[i] = m
		for _, w := range m.Weights {
			total += w.SourceSize
		}
		if !o.Overwrite {
			if _, err := os.Lstat(j.out); err == nil {
				return nil, fmt.Errorf("%s: %w", j.out, atomicfile.ErrExists)
			}
		}
	}
	if o.OnStart != nil {
		o.OnStart(total)
	}
	for i, j := range jobs {
		rm, err := restoreModel(ctx, j.in, j.out, mans[i], o)
		if err != nil {
			return nil, err
		}
		rep.Models = append(rep.Models, *rm)
		rep.BytesOut += rm.BytesOut
	}
	rep.WallSeconds = time.Since(start).Seconds()
	rep.PeakRSSBytes = procstat.PeakRSS()
	return rep, nil
}

// checkDisjoint refuses an output that is the input, inside it, or holds it.
func checkDisjoint(in, out string) error {
	if a, b, ok := absPaths(in, out); ok && (within(a, b) || within(b, a)) {
		return fmt.Errorf("refusing to restore %s into %s: one holds the other", in, out)
	}
	return nil
}

// restoreModel restores one model into out; the directories it creates
// for it are removed again on failure or interrupt if they stayed empty.
func restoreModel(ctx context.Context, in, out string, m *Manifest, o convert.RestoreOptions) (*RestoredModel, error) {
	undo, err := atomicfile.MkdirAll(filepath.Dir(filepath.Clean(out)))
	if err != nil {
		return nil, err
	}
	rm, err := restoreModelIn(ctx, in, out, m, o)
	if err != nil {
		undo()
	}
	return rm, err
}

func restoreModelIn(ctx context.Context, in, out string, m *Manifest, o convert.RestoreOptions) (*RestoredModel, error) {
	rm := &RestoredModel{Model: m.Model, Output: out, Files: len(m.Files)}
	parent := filepath.Dir(filepath.Clean(out))
	// A killed restore of the same output left this behind. (No part
	// of a user's path is a glob pattern: the entries are listed.)
	base := strings.ReplaceAll(filepath.Base(out), "*", "_") // MkdirTemp's wildcard
	pattern := atomicfile.TempPrefix + "restore-" + base + "-"
	if es, err := os.ReadDir(parent); err == nil {
		for _, e := range es {
			if strings.HasPrefix(e.Name(), pattern) {
				os.RemoveAll(filepath.Join(parent, e.Name()))
			}
		}
	}
	tmp, err := atomicdir.Temp(parent, pattern+"*")
	if err != nil {
		return nil, err
	}
	defer func() {
		if tmp != "" {
			os.RemoveAll(tmp)
		}
	}()
	ro := o
	ro.OnStart, ro.Overwrite = nil, false
	changed := map[string]bool{}
	for _, w := range m.Weights {
		p := filepath.Join(in, w.Output)
		st, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if st.Size() != w.OutputSize {
			return nil, fmt.Errorf("%s: %d bytes, the manifest records %d: damaged or replaced", p, st.Size(), w.OutputSize)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(tmp, w.Source)), 0o755); err != nil { // inside the temporary directory
			return nil, err
		}
		r, err := convert.RestoreFile(ctx, p, filepath.Join(tmp, w.Source), ro)
		if err != nil {
			return nil, err
		}
		if len(r.Files) != 1 {
			return nil, fmt.Errorf("%s holds a whole checkout, not the single file %s", p, w.Source)
		}
		if r.BytesOut != w.SourceSize {
			changed[w.Source] = true
		}
		r.Output = filepath.Join(out, w.Source)
		r.Files = []string{r.Output}
		rm.Weights = append(rm.Weights, r)
		rm.BytesOut += r.BytesOut
	}
	for _, f := range m.Files {
		src := filepath.Join(in, filepath.FromSlash(f.Path))
		n, sum, err := copyFile(ctx, src, filepath.Join(tmp, filepath.FromSlash(f.Path)))
		if err != nil {
			return nil, err
		}
		if n != f.Size || sum != f.SHA256 {
			return nil, fmt.Errorf("%s: content differs from the manifest's SHA-256: damaged or replaced", src)
		}
		rm.BytesOut += n
	}
	for _, f := range m.Files {
		if strings.Contains(f.Path, "/") || !strings.HasSuffix(f.Path, ".safetensors.index.json") {
			continue
		}
		ok, err := fixIndex(tmp, f.Path, changed)
		if err != nil {
			return nil, err
		}
		if ok {
			rm.Indexes = append(rm.Indexes, f.Path)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := atomicdir.SwapDir(tmp, out, pattern+"old-*", o.Overwrite); err != nil {
		return nil, err
	}
	tmp = ""
	return rm, nil
}

// fixIndex updates metadata.total_size of the index file name in dir when
// a shard it names changed size, to the sum of the tensor bytes of its
// shards (what transformers writes). It reports whether it did.
func fixIndex(dir, name string, changed map[string]bool) (bool, error) {
	p := filepath.Join(dir, name)
	raw, err := os.ReadFile(p)
	if err != nil {
		return false, err
	}
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		return false, fmt.Errorf("%s: %w", name, err)
	}
	var shards []string
	touched := false
	for _, s := range idx.WeightMap {
		shards = append(shards, s)
		touched = touched || changed[s]
	}
	if !touched {
		return false, nil
	}
	slices.Sort(shards)
	shards = slices.Compact(shards)
	var total int64
	for _, s := range shards {
		if !checkout.ValidName(s) {
			return false, fmt.Errorf("%s: weight_map names %q, not a file of the checkout", name, s)
		}
		n, err := tensorBytes(filepath.Join(dir, s))
		if err != nil {
			return false, fmt.Errorf("%s: %w", name, err)
		}
		total += n
	}
	b, ok := safetensors.SetTotalSize(raw, total)
	if !ok {
		return false, nil
	}
	if err := os.Remove(p); err != nil {
		return false, err
	}
	return true, writeSynced(p, b)
}

// tensorBytes sums the tensor sizes of a safetensors file.
func tensorBytes(p string) (int64, error) {
	src, err := convert.OpenSource(p)
	if err != nil {
		return 0, err
	}
	defer src.Close()
	var n int64
	for _, t := range src.Tensors() {
		n += t.Size
	}
	return n, nil
}
