package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/tpconvert/tpconvert/batch"
	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/fixtures/gen"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/internal/testkit"
	"github.com/tpconvert/tpconvert/tensor"
	"golang.org/x/sys/unix"
)

func TestParseShard(t *testing.T) {
	for _, c := range []struct {
		in   string
		i, n int
		ok   bool
	}{
		{"0/3", 0, 3, true}, {"2/3", 2, 3, true}, {" 1 / 2 ", 1, 2, true}, {"0/1", 0, 1, true},
		{"3/3", 0, 0, false}, {"-1/3", 0, 0, false}, {"1/0", 0, 0, false}, {"1", 0, 0, false}, {"a/b", 0, 0, false}, {"", 0, 0, false},
	} {
		i, n, err := parseShard(c.in)
		if (err == nil) != c.ok || i != c.i || n != c.n {
			t.Errorf("parseShard(%q) = %d, %d, %v", c.in, i, n, err)
		}
	}
}

func TestShardFromEnv(t *testing.T) {
	for _, c := range []struct {
		name  string
		env   map[string]string
		count int
		i, n  int
		msg   string
	}{
		{"k8s", map[string]string{"JOB_COMPLETION_INDEX": "2"}, 4, 2, 4, ""},
		{"k8s needs count", map[string]string{"JOB_COMPLETION_INDEX": "2"}, 0, 0, 0, "--shard-count"},
		{"k8s out of range", map[string]string{"JOB_COMPLETION_INDEX": "4"}, 4, 0, 0, "out of range"},
		{"k8s garbage", map[string]string{"JOB_COMPLETION_INDEX": "x"}, 4, 0, 0, "not a number"},
		{"slurm", map[string]string{"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3"}, 0, 1, 3, ""},
		{"slurm from 1", map[string]string{"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "3"}, 0, 2, 3, ""},
		{"slurm step", map[string]string{"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "3"}, 0, 2, 3, ""},
		{"slurm off step", map[string]string{"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "3"}, 0, 0, 0, "steps"},
		{"slurm count flag", map[string]string{"SLURM_ARRAY_TASK_ID": "5"}, 8, 5, 8, ""},
		{"slurm no count", map[string]string{"SLURM_ARRAY_TASK_ID": "5"}, 0, 0, 0, "SLURM_ARRAY_TASK_COUNT"},
		{"nothing", map[string]string{}, 3, 0, 0, "neither"},
	} {
		t.Run(c.name, func(t *testing.T) {
			i, n, err := shardFromEnv(func(k string) string { return c.env[k] }, c.count)
			if c.msg == "" {
				if err != nil || i != c.i || n != c.n {
					t.Errorf("got %d/%d, %v; want %d/%d", i, n, err, c.i, c.n)
				}
			} else if err == nil || !strings.Contains(err.Error(), c.msg) {
				t.Errorf("err = %v, want it to mention %q", err, c.msg)
			}
		})
	}
}

func TestBatchUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"batch", "-o", dir}, "SRC"},
		{[]string{"batch", dir}, "-o OUTDIR"},
		{[]string{"batch", dir, "-o", dir, "--shard", "3/3"}, "out of range"},
		{[]string{"batch", dir, "-o", dir, "--shard", "0/2", "--shard-from-env"}, "not both"},
		{[]string{"batch", dir, "-o", dir, "--shard", "0/2", "--merge"}, "--merge"},
		{[]string{"batch", dir, "-o", dir, "--shard-count", "2"}, "--shard-count"},
		{[]string{"batch", dir, "-o", dir, "--codec", "zstd"}, "unknown codec"},
	} {
		code, _, stderr := runCLI(t, c.args...)
		if code != 2 || !strings.Contains(stderr, c.msg) {
			t.Errorf("%q: exit %d, stderr %q; want 2 mentioning %q", c.args, code, stderr, c.msg)
		}
	}
}

// writeModels writes three small checkouts into root: alpha (one
// safetensors file), beta (three shards and an index), gamma (GGUF).
func writeModels(t *testing.T, root string) {
	t.Helper()
	tiny := gen.Presets["tiny"]
	put := func(p, s string) {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.MkdirAll(filepath.Join(root, "alpha"), 0o755)
	if err := gen.WriteSafetensors(filepath.Join(root, "alpha", "model.safetensors"), tiny, tensor.BF16, 1); err != nil {
		t.Fatal(err)
	}
	put(filepath.Join(root, "alpha", "config.json"), `{"model_type": "llama"}`)
	put(filepath.Join(root, "alpha", "tokenizer.json"), `{"version": "1.0"}`)
	put(filepath.Join(root, "alpha", "README.md"), "# alpha\n")
	if err := gen.WriteCheckout(filepath.Join(root, "beta"), tiny, tensor.F32, 2, 2600<<10); err != nil {
		t.Fatal(err)
	}
	put(filepath.Join(root, "beta", "config.json"), `{"model_type": "llama"}`)
	put(filepath.Join(root, "beta", "original", "params.json"), `{"dim": 256}`)
	os.MkdirAll(filepath.Join(root, "gamma"), 0o755)
	if err := gen.WriteGGUF(filepath.Join(root, "gamma", "model.gguf"), tiny, 3); err != nil {
		t.Fatal(err)
	}
	put(filepath.Join(root, "gamma", "README.md"), "# gamma\n")
}

var sameTree = testkit.SameTrees

func noTempsIn(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && (strings.HasPrefix(d.Name(), atomicfile.TempPrefix) || d.Name() == batch.StagingName) {
			t.Errorf("left behind: %s", p)
		}
		return nil
	})
}

func TestBatchCLIRoundTrip(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "models")
	writeModels(t, src)
	out := filepath.Join(dir, "out")
	code, stdout, stderr := runCLI(t, "batch", src, "-o", out, "--codec", "f16", "--workers", "2", "--json")
	if code != 0 {
		t.Fatalf("batch: exit %d: %s", code, stderr)
	}
	var rep batch.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("--json: %v\n%s", err, stdout)
	}
	if rep.Totals.Converted != 3 || rep.Totals.UnitsConverted != 5 || rep.Totals.BytesOut <= 0 {
		t.Errorf("totals %+v", rep.Totals)
	}
	// The text summary of a second run: everything up to date.
	code, stdout, _ = runCLI(t, "batch", src, "-o", out, "--codec", "f16")
	if code != 0 || !strings.Contains(stdout, "3 up to date") || !strings.Contains(stdout, "up to date") {
		t.Errorf("second run: exit %d\n%s", code, stdout)
	}
	restored := filepath.Join(dir, "restored")
	if code, _, stderr := runCLI(t, "restore", out, "-o", restored); code != 0 {
		t.Fatalf("restore: exit %d: %s", code, stderr)
	}
	for _, f := range []string{"alpha/config.json", "alpha/README.md", "beta/model.safetensors.index.json", "beta/original/params.json"} {
		a, _ := os.ReadFile(filepath.Join(src, f))
		b, err := os.ReadFile(filepath.Join(restored, f))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s not restored byte-identical (%v)", f, err)
		}
	}
	for _, f := range []string{"beta/model-00002-of-00003.safetensors", "gamma/model.gguf", "alpha/model.safetensors"} {
		if _, err := convert.OpenSource(filepath.Join(restored, f)); err != nil {
			t.Error(err)
		}
	}
	// One model directory restores on its own, by default beside itself.
	if code, _, stderr := runCLI(t, "restore", filepath.Join(out, "gamma")); code != 0 {
		t.Errorf("restore of one model: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(out, "gamma.restored", "model.gguf")); err != nil {
		t.Error(err)
	}
}

// buildBinary builds tpconvert into a temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	bin := filepath.Join(t.TempDir(), "tpconvert")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func runBin(t *testing.T, bin string, args ...string) (string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("tpconvert %q: %v\n%s", args, err, errb.String())
	}
	return out.String(), errb.String()
}

// waitFor polls until ok returns true, failing after timeout.
func waitFor(t *testing.T, what string, timeout time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// awaitCreate waits, with inotify rather than polling, until dir holds a
// name matching pattern (filepath.Match), failing after timeout.
func awaitCreate(t *testing.T, dir, pattern string, timeout time.Duration) {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "inotify")
	defer f.Close()
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		t.Fatal(err)
	}
	if len(glob(filepath.Join(dir, pattern))) > 0 { // created before the watch
		return
	}
	f.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		if err != nil {
			t.Fatalf("waiting for %s in %s: %v", pattern, dir, err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
			if ok, _ := filepath.Match(pattern, name); ok {
				return
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
}

func glob(p string) []string {
	m, _ := filepath.Glob(p)
	return m
}

func TestBatchSIGKILLThenResume(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "models")
	os.MkdirAll(filepath.Join(src, "a-tiny"), 0o755)
	if err := gen.WriteSafetensors(filepath.Join(src, "a-tiny", "model.safetensors"), gen.Presets["tiny"], tensor.BF16, 1); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(src, "a-tiny", "config.json"), []byte(`{}`), 0o644)
	// SmolLM2-135M shapes with 8 layers in F32 (about 230 MB in four
	// shards): slow enough to be killed while converting. Generated in
	// another process: child processes start with this one's peak RSS
	// as theirs, which other tests of this package measure.
	genCmd := exec.Command(os.Args[0], "-test.run=^TestGenerateHelper$")
	genCmd.Env = append(os.Environ(), "TPCONVERT_TEST_GEN="+filepath.Join(src, "b-big"))
	if out, err := genCmd.CombinedOutput(); err != nil {
		t.Fatalf("generating b-big: %v\n%s", err, out)
	}
	os.WriteFile(filepath.Join(src, "b-big", "config.json"), []byte(`{"model_type": "llama"}`), 0o644)
	shards := len(glob(filepath.Join(src, "b-big", "*.safetensors")))
	if shards < 3 {
		t.Fatalf("%d shards", shards)
	}
	out := filepath.Join(dir, "out")
	args := []string{"batch", src, "-o", out, "--codec", "f16", "--workers", "1", "--max-memory", "256MiB"}

	cmd := exec.Command(bin, args...)
	var errb bytes.Buffer
	pr, pw := io.Pipe()
	cmd.Stderr = io.MultiWriter(&errb, pw)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); pw.Close() }()
	staging := filepath.Join(out, batch.StagingName, "b-big")
	// Kill once a-tiny is complete and b-big has one weight file staged
	// and the next one in progress: the progress lines on stderr say the
	// first two, inotify the third.
	lines := bufio.NewScanner(pr)
	awaitLine := func(what, sub string) {
		t.Helper()
		for lines.Scan() {
			if strings.Contains(lines.Text(), sub) {
				return
			}
		}
		t.Fatalf("the batch ended before %s; stderr:\n%s", what, errb.String())
	}
	awaitLine("a-tiny was complete", "a-tiny: converted")
	if _, err := os.Stat(filepath.Join(out, "a-tiny", batch.ManifestName)); err != nil {
		t.Fatalf("a-tiny reported converted, but: %v", err)
	}
	awaitLine("a weight file of b-big was staged", "b-big/")
	if len(glob(filepath.Join(staging, "*.tpk.json"))) == 0 {
		t.Fatal("a weight file of b-big reported converted, but none is staged")
	}
	awaitCreate(t, staging, atomicfile.TempPrefix+"*", 60*time.Second)
	go io.Copy(io.Discard, pr) // the rest of stderr
	cmd.Process.Signal(syscall.SIGKILL)
	<-done
	staged := len(glob(filepath.Join(staging, "*.tpk.json")))
	if _, err := os.Stat(filepath.Join(out, "b-big")); err == nil || staged >= shards {
		t.Fatalf("b-big finished before the kill (%d of %d staged); stderr:\n%s", staged, shards, errb.String())
	}
	if len(glob(filepath.Join(staging, atomicfile.TempPrefix+"*"))) == 0 {
		t.Fatal("no temporary files after the kill: nothing to clean up")
	}
	tinyTPK, _ := os.Stat(filepath.Join(out, "a-tiny", "model.tpk"))

	stdout, _ := runBin(t, bin, append(args, "--json")...)
	var rep batch.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("--json: %v\n%s", err, stdout)
	}
	if len(rep.Models) != 2 || rep.Models[0].Status != batch.ModelUpToDate || rep.Models[1].Status != batch.ModelConverted {
		t.Fatalf("rerun: %+v", rep.Models)
	}
	var reStaged, converted int
	for _, u := range rep.Models[1].Units {
		switch u.Status {
		case batch.UnitStaged:
			reStaged++
		case batch.UnitConverted:
			converted++
		}
	}
	if reStaged != staged || converted != shards-staged || rep.Totals.UnitsConverted != converted {
		t.Errorf("rerun kept %d and converted %d weight files; %d were staged of %d", reStaged, converted, staged, shards)
	}
	if st, _ := os.Stat(filepath.Join(out, "a-tiny", "model.tpk")); !os.SameFile(st, tinyTPK) {
		t.Error("a-tiny was converted again")
	}
	noTempsIn(t, out)
	// The result is what an uninterrupted run gives.
	ref := filepath.Join(dir, "ref")
	runBin(t, bin, "batch", src, "-o", ref, "--codec", "f16", "--workers", "2")
	sameTree(t, ref, out)
}

// TestGenerateHelper is not a test: TestBatchSIGKILLThenResume runs the
// test binary with TPCONVERT_TEST_GEN set to write its large checkout
// there from another process.
func TestGenerateHelper(t *testing.T) {
	dir := os.Getenv("TPCONVERT_TEST_GEN")
	if dir == "" {
		t.Skip("helper process of TestBatchSIGKILLThenResume")
	}
	big := gen.Presets["smollm2"]
	big.Layers = 8
	if err := gen.WriteCheckout(dir, big, tensor.F32, 1, 64<<20); err != nil {
		t.Fatal(err)
	}
}

func TestBatchShardsInSeparateProcesses(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "models")
	writeModels(t, src)
	flags := []string{"--codec", "f16", "--workers", "1"}
	ref := filepath.Join(dir, "ref")
	runBin(t, bin, append([]string{"batch", src, "-o", ref}, flags...)...)

	// One after another, in an order other than 0, 1, 2; then merge.
	seq := filepath.Join(dir, "seq")
	for _, i := range []string{"2/3", "0/3", "1/3"} {
		runBin(t, bin, append([]string{"batch", src, "-o", seq, "--shard", i}, flags...)...)
	}
	stdout, _ := runBin(t, bin, append([]string{"batch", src, "-o", seq, "--merge", "--json"}, flags...)...)
	var rep batch.Report
	json.Unmarshal([]byte(stdout), &rep)
	if rep.Totals.UpToDate != 3 || rep.Totals.UnitsConverted != 0 {
		t.Errorf("merge after sequential shards: %+v", rep.Totals)
	}
	sameTree(t, ref, seq)
	noTempsIn(t, seq)

	// All at once, the shard taken from the environment as in a
	// Kubernetes Indexed Job; then merge.
	par := filepath.Join(dir, "par")
	var cmds []*exec.Cmd
	var errs []*bytes.Buffer
	for i := range 3 {
		cmd := exec.Command(bin, append([]string{"batch", src, "-o", par, "--shard-from-env", "--shard-count", "3"}, flags...)...)
		cmd.Env = append(os.Environ(), "JOB_COMPLETION_INDEX="+string(rune('0'+i)))
		errb := new(bytes.Buffer)
		cmd.Stderr = errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds, errs = append(cmds, cmd), append(errs, errb)
	}
	for i, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Errorf("shard %d/3: %v\n%s", i, err, errs[i])
		}
	}
	runBin(t, bin, append([]string{"batch", src, "-o", par, "--merge"}, flags...)...)
	sameTree(t, ref, par)
	noTempsIn(t, par)
}

// TestBatchForeignDirectoryNamesForce: the library reports an output
// directory it did not write in its own words (batch.ErrNotConverted); the
// command names the flag that replaces it, and restoring a converted
// directory with --to names the flags that do not apply.
func TestBatchForeignDirectoryNamesForce(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "models")
	writeModels(t, src)
	out := filepath.Join(dir, "out")
	if err := os.MkdirAll(filepath.Join(out, "alpha"), 0o755); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLI(t, "batch", filepath.Join(src, "alpha"), "-o", out, "--codec", "none")
	if code != 1 || !strings.Contains(stderr, "is not a converted model") || !strings.Contains(stderr, "remove it or use --force") {
		t.Errorf("foreign output directory: exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr := runCLI(t, "batch", filepath.Join(src, "alpha"), "-o", out, "--codec", "none", "--force"); code != 0 {
		t.Fatalf("--force: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = runCLI(t, "restore", filepath.Join(out, "alpha"), "-o", filepath.Join(dir, "r"), "--to", "gguf")
	if code == 0 || !strings.Contains(stderr, "--to and --shard-size do not apply") {
		t.Errorf("restore of a converted directory with --to: exit %d, stderr %q", code, stderr)
	}
}
