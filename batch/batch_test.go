package batch_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tpconvert/tpconvert/batch"
	"github.com/tpconvert/tpconvert/batch/checkout"
	_ "github.com/tpconvert/tpconvert/codec/basic"
	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/fixtures/gen"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/internal/testfs"
	"github.com/tpconvert/tpconvert/internal/testkit"
	"github.com/tpconvert/tpconvert/stream"
	"github.com/tpconvert/tpconvert/tensor"
)

var (
	tiny  = gen.Presets["tiny"]
	small = gen.Presets["small"]

	mustCodec    = testkit.MustCodec
	tensorHashes = testkit.TensorHashes
	noTemps      = testkit.NoTemps
	treeHashes   = testkit.TreeHashes
	sameTrees    = testkit.SameTrees
)

// writeFile writes a small file, creating its directory.
var writeFile = testfs.WriteFile

// makeModels writes three checkouts into root: alpha (one safetensors
// file), beta (three shards and an index) and gamma (one GGUF file), each
// with non-weight files.
func makeModels(t *testing.T, root string) {
	t.Helper()
	alpha := filepath.Join(root, "alpha")
	if err := os.MkdirAll(alpha, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := gen.WriteSafetensors(filepath.Join(alpha, "model.safetensors"), tiny, tensor.BF16, 1); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(alpha, "config.json"), `{"model_type": "llama", "hidden_size": 256}`+"\n")
	writeFile(t, filepath.Join(alpha, "generation_config.json"), `{"do_sample": true}`)
	writeFile(t, filepath.Join(alpha, "tokenizer.json"), `{"version": "1.0", "model": {"type": "BPE"}}`)
	writeFile(t, filepath.Join(alpha, "README.md"), "# alpha\n")

	beta := filepath.Join(root, "beta")
	if err := gen.WriteCheckout(beta, tiny, tensor.F32, 2, 2600<<10); err != nil {
		t.Fatal(err)
	}
	shards, _ := filepath.Glob(filepath.Join(beta, "*.safetensors"))
	if len(shards) != 3 {
		t.Fatalf("generator wrote %d shards, want 3", len(shards))
	}
	writeFile(t, filepath.Join(beta, "config.json"), `{"model_type": "llama"}`)
	writeFile(t, filepath.Join(beta, "LICENSE"), "Apache-2.0\n")
	writeFile(t, filepath.Join(beta, "original", "params.json"), `{"dim": 256}`)

	gamma := filepath.Join(root, "gamma")
	if err := os.MkdirAll(gamma, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := gen.WriteGGUF(filepath.Join(gamma, "model.gguf"), tiny, 3); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(gamma, "README.md"), "# gamma\n")
}

// newModels writes makeModels' checkouts into dir/models of a new
// temporary dir, and names dir/out for the output.
func newModels(t *testing.T) (dir, src, out string) {
	t.Helper()
	dir = t.TempDir()
	src = filepath.Join(dir, "models")
	makeModels(t, src)
	return dir, src, filepath.Join(dir, "out")
}

// newAlpha writes a checkout of one safetensors file into dir/alpha of a
// new temporary dir, and names dir/out for the output.
func newAlpha(t *testing.T) (src, out string) {
	t.Helper()
	dir := t.TempDir()
	src = filepath.Join(dir, "alpha")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := gen.WriteSafetensors(filepath.Join(src, "model.safetensors"), tiny, tensor.BF16, 1); err != nil {
		t.Fatal(err)
	}
	return src, filepath.Join(dir, "out")
}

func batchOpts(t *testing.T, c string) batch.Options {
	return batch.Options{
		Options:  stream.Options{Workers: 2, MaxMemory: 64 << 20},
		Codec:    mustCodec(t, c),
		Selector: stream.Selector{Layers: stream.LayersAll},
		Version:  "test",
	}
}

func runBatch(t *testing.T, srcs []string, out string, o batch.Options) *batch.Report {
	t.Helper()
	rep, err := batch.Run(context.Background(), srcs, out, o)
	if err != nil {
		t.Fatalf("batch: %v", err)
	}
	return rep
}

func statuses(rep *batch.Report) map[string]batch.ModelStatus {
	m := map[string]batch.ModelStatus{}
	for _, r := range rep.Models {
		m[r.Name] = r.Status
	}
	return m
}

func TestBatchRoundTrip(t *testing.T) {
	dir, src, out := newModels(t)
	o := batchOpts(t, "f16")
	rep := runBatch(t, []string{src}, out, o)
	if rep.Totals.Models != 3 || rep.Totals.Converted != 3 || rep.Totals.UnitsConverted != 5 {
		t.Fatalf("totals %+v", rep.Totals)
	}
	for _, want := range []string{"alpha/model.tpk", "beta/model-00001-of-00003.tpk", "beta/model-00003-of-00003.tpk",
		"beta/model.safetensors.index.json", "beta/original/params.json", "gamma/model.tpk", "gamma/manifest.json", "gamma/run.json"} {
		if _, err := os.Stat(filepath.Join(out, want)); err != nil {
			t.Error(err)
		}
	}
	if _, err := os.Stat(filepath.Join(out, batch.StagingName)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("staging directory left behind: %v", err)
	}
	if !batch.IsConvertedDir(out) || !batch.IsConvertedDir(filepath.Join(out, "beta")) || batch.IsConvertedDir(src) {
		t.Error("IsConvertedDir is wrong")
	}
	noTemps(t, out)
	man, err := batch.ReadManifest(filepath.Join(out, "beta"))
	if err != nil {
		t.Fatal(err)
	}
	if len(man.Weights) != 3 || man.Settings.Codec != "f16" || man.Weights[0].Output != "model-00001-of-00003.tpk" ||
		man.Weights[0].Kind != "safetensors" || man.Weights[0].SourceSHA256 == "" || man.Totals.Params != tiny.Params() {
		t.Errorf("manifest %+v", man)
	}
	for _, w := range man.Weights {
		b, _ := os.ReadFile(filepath.Join(src, "beta", w.Source))
		if s := sha256.Sum256(b); hex.EncodeToString(s[:]) != w.SourceSHA256 || int64(len(b)) != w.SourceSize {
			t.Errorf("%s: recorded hash or size is wrong", w.Source)
		}
		b, _ = os.ReadFile(filepath.Join(out, "beta", w.Output))
		if s := sha256.Sum256(b); hex.EncodeToString(s[:]) != w.OutputSHA256 || int64(len(b)) != w.OutputSize {
			t.Errorf("%s: recorded output hash or size is wrong", w.Output)
		}
	}

	restored := filepath.Join(dir, "restored")
	rrep, err := batch.RestoreDir(context.Background(), out, restored, convert.RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rrep.Models) != 3 {
		t.Fatalf("restored %d models", len(rrep.Models))
	}
	noTemps(t, dir)
	for _, m := range []string{"alpha", "beta", "gamma"} {
		checkRestored(t, filepath.Join(src, m), filepath.Join(restored, m), o.Selector)
		for _, d := range []string{filepath.Join(out, m), filepath.Join(restored, m)} {
			if st, err := os.Stat(d); err != nil || st.Mode().Perm() != 0o755 {
				t.Errorf("%s: mode %v, %v", d, st.Mode(), err)
			}
		}
	}
	// The sharded checkout opens as one model: index and shards agree.
	sameTensorSet(t, filepath.Join(src, "beta"), filepath.Join(restored, "beta"))
}

// checkRestored compares a restored checkout with its source: the same
// files, non-weight files byte-identical, weight files with the same
// tensors and every tensor the selector leaves alone bit-exact.
func checkRestored(t *testing.T, src, got string, sel stream.Selector) {
	t.Helper()
	hs, hg := treeHashes(t, src), treeHashes(t, got)
	if len(hs) != len(hg) {
		t.Errorf("%s: %d files restored, source has %d", got, len(hg), len(hs))
	}
	for name, h := range hs {
		if strings.HasSuffix(name, ".safetensors") || strings.HasSuffix(name, ".gguf") {
			checkTensors(t, filepath.Join(src, name), filepath.Join(got, name), sel)
			continue
		}
		if hg[name] != h {
			t.Errorf("%s: not restored byte-identical", filepath.Join(got, name))
		}
	}
}

func checkTensors(t *testing.T, a, b string, sel stream.Selector) {
	t.Helper()
	sa := testkit.OpenSource(t, a)
	sb := testkit.OpenSource(t, b)
	ta, tb := sa.Tensors(), sb.Tensors()
	if len(ta) != len(tb) {
		t.Fatalf("%s: %d tensors, source %d", b, len(tb), len(ta))
	}
	untouched := 0
	for i := range ta {
		if ta[i].Name != tb[i].Name || !slices.Equal(ta[i].Shape, tb[i].Shape) {
			t.Errorf("%s: tensor %d is %s %v, source %s %v", b, i, tb[i].Name, tb[i].Shape, ta[i].Name, ta[i].Shape)
			continue
		}
		if sel.Select(ta[i]) {
			continue
		}
		untouched++
		x, _ := sa.Bytes(i)
		y, _ := sb.Bytes(i)
		if ta[i].DType != tb[i].DType || sha256.Sum256(x) != sha256.Sum256(y) {
			t.Errorf("%s: untouched tensor %s changed", b, ta[i].Name)
		}
	}
	if untouched == 0 {
		t.Errorf("%s: no untouched tensors compared", b)
	}
	if ma, mb := sa.Meta(), sb.Meta(); ma.Kind != mb.Kind || (ma.GGUF != nil && !bytes.Equal(ma.GGUF.KV, mb.GGUF.KV)) {
		t.Errorf("%s: container metadata changed", b)
	}
}

func sameTensorSet(t *testing.T, a, b string) {
	t.Helper()
	ha, _ := tensorHashes(t, a)
	hb, _ := tensorHashes(t, b)
	if len(ha) != len(hb) || len(ha) != len(tiny.HFTensors()) {
		t.Errorf("%d tensors vs %d", len(ha), len(hb))
	}
	for k := range ha {
		if _, ok := hb[k]; !ok {
			t.Errorf("tensor %s missing from %s", k, b)
		}
	}
}

func TestBatchRestoreDTypeUpdatesIndex(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "beta")
	if err := gen.WriteCheckout(src, tiny, tensor.F32, 2, 2600<<10); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	runBatch(t, []string{src}, out, batchOpts(t, "f16"))
	restored := filepath.Join(dir, "restored")
	ro := convert.RestoreOptions{}
	ro.DType = tensor.F16
	rrep, err := batch.RestoreDir(context.Background(), filepath.Join(out, "beta"), restored, ro)
	if err != nil {
		t.Fatal(err)
	}
	if len(rrep.Models) != 1 || !slices.Equal(rrep.Models[0].Indexes, []string{"model.safetensors.index.json"}) {
		t.Fatalf("report %+v", rrep.Models)
	}
	var orig, got struct {
		Metadata struct {
			TotalSize int64 `json:"total_size"`
		} `json:"metadata"`
		WeightMap map[string]string `json:"weight_map"`
	}
	readJSONFile(t, filepath.Join(src, "model.safetensors.index.json"), &orig)
	readJSONFile(t, filepath.Join(restored, "model.safetensors.index.json"), &got)
	s, err := convert.OpenSource(restored) // checks the index against the shards
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var sum int64
	for _, ti := range s.Tensors() {
		sum += ti.Size
	}
	if got.Metadata.TotalSize != sum || got.Metadata.TotalSize >= orig.Metadata.TotalSize {
		t.Errorf("total_size %d, tensors hold %d bytes (source %d)", got.Metadata.TotalSize, sum, orig.Metadata.TotalSize)
	}
	if !equalMaps(orig.WeightMap, got.WeightMap) {
		t.Error("weight_map changed")
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func readJSONFile(t *testing.T, p string, v any) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", p, err)
	}
}

func TestBatchResume(t *testing.T) {
	_, src, out := newModels(t)
	o := batchOpts(t, "f16")
	runBatch(t, []string{src}, out, o)
	before := treeHashes(t, out)
	tpkInfo, _ := os.Stat(filepath.Join(out, "alpha", "model.tpk"))

	// Nothing changed: everything is skipped.
	rep := runBatch(t, []string{src}, out, o)
	if rep.Totals.UpToDate != 3 || rep.Totals.UnitsConverted != 0 {
		t.Errorf("second run: %+v", rep.Totals)
	}
	// A new modification time with the same content is recognised by
	// its hash.
	future := time.Now().Add(time.Hour)
	os.Chtimes(filepath.Join(src, "gamma", "model.gguf"), future, future)
	if rep := runBatch(t, []string{src}, out, o); rep.Totals.UpToDate != 3 {
		t.Errorf("after touching a weight file: %+v", statuses(rep))
	}
	// A changed README rebuilds alpha, reusing its converted weights.
	writeFile(t, filepath.Join(src, "alpha", "README.md"), "# alpha, revised\n")
	rep = runBatch(t, []string{src}, out, o)
	if st := statuses(rep); st["alpha"] != batch.ModelConverted || st["beta"] != batch.ModelUpToDate || rep.Totals.UnitsConverted != 0 {
		t.Errorf("after editing a README: %v, %+v", st, rep.Totals)
	}
	if u := rep.Models[0].Units[0]; u.Status != batch.UnitReused {
		t.Errorf("alpha's weights: %s", u.Status)
	}
	after := treeHashes(t, out)
	for k, v := range before {
		if k != "alpha/README.md" && k != "alpha/manifest.json" && after[k] != v {
			t.Errorf("%s changed", k)
		}
	}
	if st, _ := os.Stat(filepath.Join(out, "alpha", "model.tpk")); !os.SameFile(st, tpkInfo) {
		t.Error("alpha's .tpk was rewritten instead of reused")
	}
	// Other settings convert again.
	o2 := batchOpts(t, "none")
	if rep := runBatch(t, []string{src}, out, o2); rep.Totals.UnitsConverted != 5 {
		t.Errorf("new codec: %+v", rep.Totals)
	}
	// --force converts again.
	o2.Force = true
	if rep := runBatch(t, []string{src}, out, o2); rep.Totals.UnitsConverted != 5 {
		t.Errorf("force: %+v", rep.Totals)
	}
	noTemps(t, out)
}

func TestBatchRemovesStrayTemps(t *testing.T) {
	src, out := newAlpha(t)
	mine := filepath.Join(out, atomicfile.TempPrefix+"s1of2-model-123")
	other := filepath.Join(out, atomicfile.TempPrefix+"s0of2-model-456")
	unit := filepath.Join(out, batch.StagingName, "alpha", atomicfile.TempPrefix+"s1of2-unit-789")
	for _, p := range []string{mine, other, unit} {
		writeFile(t, filepath.Join(p, "x.tpk"), "partial")
	}
	o := batchOpts(t, "none")
	o.Shard, o.Shards = 1, 2
	runBatch(t, []string{src}, out, o)
	for p, want := range map[string]bool{mine: false, unit: false, other: true} {
		if _, err := os.Stat(p); (err == nil) != want {
			t.Errorf("%s: exists=%v after a run of shard 1/2", p, err == nil)
		}
	}
	// An unsharded run removes every temporary file.
	o.Shard, o.Shards = 0, 1
	runBatch(t, []string{src}, out, o)
	noTemps(t, out)
}

func TestUnitsCoverEveryUnitOnce(t *testing.T) {
	var cs []checkout.Checkout
	for m := 0; m < 5; m++ {
		c := checkout.Checkout{Name: fmt.Sprintf("m%d", m)}
		for f := 0; f <= m; f++ {
			c.Weights = append(c.Weights, checkout.WeightFile{Name: fmt.Sprintf("w%d.safetensors", f), Size: int64(1000 * (f + 1) * (m + 1))})
		}
		cs = append(cs, c)
	}
	for n := 1; n <= 7; n++ {
		us := batch.Units(cs, n)
		again := batch.Units(cs, n)
		if len(us) != 15 || !slices.Equal(us, again) {
			t.Fatalf("n=%d: %d units, or not deterministic", n, len(us))
		}
		seen := map[string]int{}
		load := make([]int64, n)
		for _, u := range us {
			if u.Shard < 0 || u.Shard >= n {
				t.Fatalf("n=%d: unit %s in shard %d", n, u.Name(), u.Shard)
			}
			seen[u.Name()]++
			load[u.Shard] += u.Weight.Size
		}
		for name, k := range seen {
			if k != 1 {
				t.Errorf("n=%d: %s listed %d times", n, name, k)
			}
		}
		// Greedy by size: no shard exceeds another by more than the
		// largest unit.
		if n > 1 && slices.Max(load)-slices.Min(load) > 25000 {
			t.Errorf("n=%d: unbalanced loads %v", n, load)
		}
	}
}

func TestBatchShardsThenMerge(t *testing.T) {
	dir, src, _ := newModels(t)
	ref := filepath.Join(dir, "ref")
	runBatch(t, []string{src}, ref, batchOpts(t, "f16"))

	for _, order := range [][]int{{0, 1, 2}, {2, 0, 1}} {
		out := filepath.Join(dir, fmt.Sprintf("out%v", order))
		var waited bool
		for _, i := range order {
			o := batchOpts(t, "f16")
			o.Shard, o.Shards = i, 3
			rep := runBatch(t, []string{src}, out, o)
			for _, m := range rep.Models {
				waited = waited || m.Status == batch.ModelWaiting
			}
		}
		if !waited {
			t.Error("no model waited for another shard: the sharded model was not split")
		}
		o := batchOpts(t, "f16")
		o.Merge = true
		if rep := runBatch(t, []string{src}, out, o); rep.Totals.UpToDate != 3 {
			t.Errorf("merge after all shards: %v", statuses(rep))
		}
		sameTrees(t, ref, out)
	}
}

func TestBatchMergeCompletesStagedModels(t *testing.T) {
	dir, src, out := newModels(t)
	// Stop the run after beta's last weight file is staged, before the
	// model is assembled (as when shards finish at the same moment).
	ctx, cancel := context.WithCancel(context.Background())
	o := batchOpts(t, "f16")
	o.OnEvent = func(e batch.Event) {
		if e.Kind == batch.EventUnitDone && e.Unit.Source == "model-00003-of-00003.safetensors" {
			cancel()
		}
	}
	if _, err := batch.Run(ctx, []string{src}, out, o); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(out, "beta")); err == nil {
		t.Fatal("beta was assembled")
	}
	// A merge without gamma's conversion names what is missing.
	o = batchOpts(t, "f16")
	o.Merge = true
	rep, err := batch.Run(context.Background(), []string{src}, out, o)
	if !errors.Is(err, batch.ErrIncomplete) || !strings.Contains(err.Error(), "gamma") || !strings.Contains(err.Error(), "missing model.gguf") {
		t.Fatalf("merge with gamma missing: %v", err)
	}
	if st := statuses(rep); st["alpha"] != batch.ModelUpToDate || st["beta"] != batch.ModelConverted || st["gamma"] != batch.ModelIncomplete {
		t.Errorf("merge: %v", st)
	}
	if rep.Totals.UnitsConverted != 0 {
		t.Error("merge converted something")
	}
	// Given the number of shards, merge names the shard that owns it.
	o.Shards = 3
	var gammaShard int
	for _, u := range batch.Units(mustFind(t, src), 3) {
		if u.Model == "gamma" {
			gammaShard = u.Shard
		}
	}
	_, err = batch.Run(context.Background(), []string{src}, out, o)
	if want := fmt.Sprintf("missing model.gguf (shard %d/3)", gammaShard); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("merge with 3 shards: %v; want it to mention %q", err, want)
	}
	runBatch(t, []string{src}, out, batchOpts(t, "f16"))
	ref := filepath.Join(dir, "ref")
	runBatch(t, []string{src}, ref, batchOpts(t, "f16"))
	sameTrees(t, ref, out)
}

func mustFind(t *testing.T, srcs ...string) []checkout.Checkout {
	t.Helper()
	cs, _, err := checkout.Find(srcs, "")
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func TestBatchFailureIsolated(t *testing.T) {
	dir, src, _ := newModels(t)
	// A header that parses as far as detection but not further.
	bad := filepath.Join(src, "delta", "model.safetensors")
	writeFile(t, bad, "\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1")
	out := filepath.Join(dir, "out")
	rep, err := batch.Run(context.Background(), []string{src}, out, batchOpts(t, "none"))
	if !errors.Is(err, batch.ErrIncomplete) || !strings.Contains(err.Error(), "delta") {
		t.Fatalf("err = %v", err)
	}
	if st := statuses(rep); st["delta"] != batch.ModelFailed || st["alpha"] != batch.ModelConverted || st["gamma"] != batch.ModelConverted {
		t.Errorf("statuses %v", st)
	}
	if _, err := os.Stat(filepath.Join(out, "delta")); err == nil {
		t.Error("failed model has an output directory")
	}
	noTemps(t, out)
}

func TestFindCheckouts(t *testing.T) {
	dir := t.TempDir()
	makeModels(t, filepath.Join(dir, "models"))
	writeFile(t, filepath.Join(dir, "models", "docs", "notes.txt"), "not a model")
	os.MkdirAll(filepath.Join(dir, "other"), 0o755)
	os.Symlink(filepath.Join(dir, "models", "alpha"), filepath.Join(dir, "other", "alpha"))
	writeFile(t, filepath.Join(dir, "models", "alpha", ".git", "HEAD"), "ref")
	writeFile(t, filepath.Join(dir, "models", "alpha", atomicfile.TempPrefix+"x"), "")
	os.Symlink("..", filepath.Join(dir, "models", "beta", "original", "loop"))

	cs, notes, err := checkout.Find([]string{filepath.Join(dir, "models")}, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 3 || len(notes) != 1 || !strings.Contains(notes[0], "docs") {
		t.Fatalf("%d checkouts, notes %q", len(cs), notes)
	}
	if got := cs[0].Files; !slices.Equal(got, []string{"README.md", "config.json", "generation_config.json", "tokenizer.json"}) {
		t.Errorf("alpha files %q", got)
	}
	if w := cs[1].Weights; len(w) != 3 || w[2].Output != "model-00003-of-00003.tpk" {
		t.Errorf("beta weights %+v", w)
	}
	if !slices.Contains(cs[1].Files, "original/params.json") || !slices.Contains(cs[1].Files, "model.safetensors.index.json") {
		t.Errorf("beta files %q", cs[1].Files)
	}
	if w := cs[2].Weights; len(w) != 1 || w[0].Kind != formats.GGUF {
		t.Errorf("gamma weights %+v", w)
	}

	for name, tc := range map[string]struct {
		srcs []string
		msg  string
	}{
		"duplicate name": {[]string{filepath.Join(dir, "models", "alpha"), filepath.Join(dir, "other", "alpha")}, "unique"},
		"file":           {[]string{filepath.Join(dir, "models", "alpha", "README.md")}, "not a directory"},
		"no models":      {[]string{filepath.Join(dir, "models", "docs")}, "no *.safetensors"},
		"missing":        {[]string{filepath.Join(dir, "nope")}, "no such file"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := checkout.Find(tc.srcs, "")
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("err = %v, want it to mention %q", err, tc.msg)
			}
		})
	}

	// Same stem, two containers; a reserved name; content not matching
	// the name.
	odd := filepath.Join(dir, "odd")
	os.MkdirAll(odd, 0o755)
	gen.WriteSafetensors(filepath.Join(odd, "model.safetensors"), tiny, tensor.BF16, 1)
	gen.WriteGGUF(filepath.Join(odd, "model.gguf"), tiny, 1)
	cs, _, err = checkout.Find([]string{odd}, "")
	if err != nil {
		t.Fatal(err)
	}
	if w := cs[0].Weights; w[0].Output != "model.gguf.tpk" || w[1].Output != "model.safetensors.tpk" {
		t.Errorf("outputs %+v", w)
	}
	writeFile(t, filepath.Join(odd, "manifest.json"), "{}")
	if _, _, err := checkout.Find([]string{odd}, ""); err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Errorf("reserved name: %v", err)
	}
	os.Remove(filepath.Join(odd, "manifest.json"))
	writeFile(t, filepath.Join(odd, "x.gguf"), "\x10\x00\x00\x00\x00\x00\x00\x00{}")
	if _, _, err := checkout.Find([]string{odd}, ""); err == nil || !strings.Contains(err.Error(), "x.gguf") {
		t.Errorf("mislabelled file: %v", err)
	}
}

func TestRestoreDirChecks(t *testing.T) {
	dir, src, out := newModels(t)
	runBatch(t, []string{src}, out, batchOpts(t, "none"))
	ctx := context.Background()
	model := filepath.Join(out, "alpha")

	restored := filepath.Join(dir, "r")
	os.Mkdir(restored, 0o755)
	if _, err := batch.RestoreDir(ctx, model, restored, convert.RestoreOptions{}); !errors.Is(err, atomicfile.ErrExists) {
		t.Errorf("existing output: %v", err)
	}
	if _, err := batch.RestoreDir(ctx, model, filepath.Join(model, "sub"), convert.RestoreOptions{}); err == nil {
		t.Error("restore into its own input succeeded")
	}
	if _, err := batch.RestoreDir(ctx, model, filepath.Join(dir, "x"), convert.RestoreOptions{To: formats.GGUF}); err == nil {
		t.Error("--to accepted")
	}
	if _, err := batch.RestoreDir(ctx, filepath.Join(src, "alpha"), filepath.Join(dir, "x"), convert.RestoreOptions{}); err == nil || !strings.Contains(err.Error(), "manifest.json") {
		t.Errorf("not a converted directory: %v", err)
	}
	// With --force the existing directory is replaced; lossless codec:
	// every file comes back byte-identical.
	if _, err := batch.RestoreDir(ctx, model, restored, convert.RestoreOptions{Overwrite: true}); err != nil {
		t.Fatal(err)
	}
	sameTrees(t, filepath.Join(src, "alpha"), restored)

	// A damaged copied file is detected.
	writeFile(t, filepath.Join(model, "README.md"), "# tampered\n")
	if _, err := batch.RestoreDir(ctx, model, filepath.Join(dir, "y"), convert.RestoreOptions{}); err == nil || !strings.Contains(err.Error(), "SHA-256") {
		t.Errorf("tampered file: %v", err)
	}
	// A manifest naming a path outside the directory is refused.
	b, _ := os.ReadFile(filepath.Join(model, "manifest.json"))
	b = bytes.Replace(b, []byte(`"path": "README.md"`), []byte(`"path": "../../etc/passwd"`), 1)
	os.WriteFile(filepath.Join(model, "manifest.json"), b, 0o644)
	if _, err := batch.RestoreDir(ctx, model, filepath.Join(dir, "z"), convert.RestoreOptions{}); !errors.Is(err, batch.ErrManifest) {
		t.Errorf("path outside: %v", err)
	}
	noTemps(t, dir)
}

func TestBatchDryRunWritesNothing(t *testing.T) {
	_, src, out := newModels(t)
	o := batchOpts(t, "none")
	o.DryRun, o.Shard, o.Shards = true, 1, 2
	var planned batch.Event
	o.OnEvent = func(e batch.Event) {
		if e.Kind == batch.EventPlanned {
			planned = e
		}
	}
	rep := runBatch(t, []string{src}, out, o)
	if _, err := os.Stat(out); err == nil {
		t.Error("dry run created the output directory")
	}
	var todo int
	for _, m := range rep.Models {
		for _, u := range m.Units {
			if u.Status == batch.UnitToDo {
				todo++
				if u.Shard != 1 {
					t.Errorf("%s/%s of shard %d planned by shard 1", u.Model, u.Source, u.Shard)
				}
			}
		}
	}
	if todo == 0 || planned.Units != todo {
		t.Errorf("planned %d units, reported %d", planned.Units, todo)
	}
}

func TestBatchRefusesForeignDirectory(t *testing.T) {
	src, out := newAlpha(t)
	precious := filepath.Join(out, "alpha", "notes.txt")
	writeFile(t, precious, "mine")
	o := batchOpts(t, "none")
	rep, err := batch.Run(context.Background(), []string{src}, out, o)
	// The command line names --force for it (TestBatchForeignDirectoryNamesForce).
	if !errors.Is(err, batch.ErrIncomplete) || !errors.Is(err, batch.ErrNotConverted) || rep.Models[0].Status != batch.ModelFailed {
		t.Fatalf("err = %v", err)
	}
	if b, _ := os.ReadFile(precious); string(b) != "mine" {
		t.Fatal("a directory that is not a converted model was touched")
	}
	o.Force = true
	runBatch(t, []string{src}, out, o)
	if _, err := os.Stat(precious); err == nil {
		t.Error("--force kept the old directory")
	}
	if _, err := batch.ReadManifest(filepath.Join(out, "alpha")); err != nil {
		t.Error(err)
	}
	noTemps(t, out)
}
