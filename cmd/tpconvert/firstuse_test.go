package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpconvert/tpconvert/batch"
	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/fixtures/gen"
	"github.com/tpconvert/tpconvert/tensor"
)

// compressJSON runs compress with --json and returns its totals.
func compressJSON(t *testing.T, args ...string) (in, out int64) {
	t.Helper()
	code, stdout, stderr := runCLI(t, append(args, "--json")...)
	if code != 0 {
		t.Fatalf("%v: exit %d: %s", args, code, stderr)
	}
	var rep struct {
		Totals struct {
			BytesIn  int64 `json:"bytes_in"`
			BytesOut int64 `json:"bytes_out"`
		} `json:"totals"`
	}
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatal(err)
	}
	return rep.Totals.BytesIn, rep.Totals.BytesOut
}

// TestDefaultNeverGrows: the default codec makes every bundled and
// generated checkpoint smaller, whatever its dtype (the GGUF fixture holds
// 4-bit tensors, which it stores unchanged).
func TestDefaultNeverGrows(t *testing.T) {
	dir := t.TempDir()
	inputs := []string{"../../fixtures/tiny-llama.safetensors", "../../fixtures/tiny-llama.gguf"}
	for _, dt := range []tensor.DType{tensor.F32, tensor.F16, tensor.BF16} {
		p := filepath.Join(dir, dt.String()+".safetensors")
		if err := gen.WriteSafetensors(p, gen.Presets["small"], dt, 2); err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, p)
	}
	if err := os.Mkdir(filepath.Join(dir, "out"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i, in := range inputs {
		out := filepath.Join(dir, "out", filepath.Base(in)+".tpk")
		bin, bout := compressJSON(t, in, "-o", out)
		st, err := os.Stat(out)
		if err != nil {
			t.Fatal(err)
		}
		if bout != st.Size() || bout >= bin || bin == 0 {
			t.Errorf("%s: default codec wrote %d bytes (file %d) from %d", in, bout, st.Size(), bin)
		}
		if i == 1 { // the GGUF fixture: its 4-bit tensors are stored unchanged, and said so
			code, stdout, _ := runCLI(t, in, "-o", out, "--force")
			if code != 0 || !strings.Contains(stdout, "the codec would not make them smaller") || strings.Contains(stdout, "warning") {
				t.Errorf("GGUF summary:\n%s", stdout)
			}
		}
	}
}

// TestSummary: compact by default (no per-tensor rows), every tensor with
// -v, and a warning when the output is larger than the input.
func TestSummary(t *testing.T) {
	dir, in := fixture(t)
	code, stdout, _ := runCLI(t, in, "-o", filepath.Join(dir, "a.tpk"))
	if code != 0 || strings.Contains(stdout, "model.layers.0") || !strings.Contains(stdout, "ratio") || strings.Contains(stdout, "warning") {
		t.Errorf("default summary is not compact:\n%s", stdout)
	}
	code, stdout, _ = runCLI(t, in, "-v", "-o", filepath.Join(dir, "b.tpk"))
	if code != 0 || !strings.Contains(stdout, "model.layers.1.mlp.down_proj.weight") || !strings.Contains(stdout, "model.norm.weight") {
		t.Errorf("-v summary lacks the tensor table:\n%s", stdout)
	}
	code, stdout, _ = runCLI(t, "inspect", filepath.Join(dir, "b.tpk"))
	if code != 0 || !strings.Contains(stdout, "model.layers.1.mlp.down_proj.weight") {
		t.Errorf("inspect lacks the tensor table:\n%s", stdout)
	}
	// none stores every tensor unchanged: the container's index makes
	// the file larger, and the summary says so.
	code, stdout, _ = runCLI(t, in, "--codec", "none", "-o", filepath.Join(dir, "c.tpk"))
	if code != 0 || !strings.Contains(stdout, "warning          the output is larger than the input") {
		t.Errorf("no warning for a larger output:\n%s", stdout)
	}
}

// TestUsageErrors: zero and malformed flag values, unknown flags and
// missing values are one message and exit 2, never a default silently
// taken or the whole usage printed; no output is written.
func TestUsageErrors(t *testing.T) {
	dir, in := fixture(t)
	out := filepath.Join(dir, "bad.tpk")
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--bpw", "0"}, "--bpw 0: want above 0"},
		{[]string{"--target-size", "0"}, "--target-size 0 B: want above 0"},
		{[]string{"--rank", "0"}, "--rank 0: want above 0"},
		{[]string{"--group-size", "0"}, "--group-size 0: want above 0"},
		{[]string{"--workers", "0"}, "--workers 0: want above 0"},
		{[]string{"--max-memory", "0"}, "--max-memory 0 B: want above 0"},
		{[]string{"--bpw", "abc"}, `--bpw "abc": not a number`},
		{[]string{"--max-memory", "abc"}, `--max-memory "abc": invalid size "abc" (want e.g. 512MiB, 4GiB, 5GB)`},
		{[]string{"--frobnicate"}, "unknown flag --frobnicate"},
		{[]string{"--no-stats=maybe"}, `--no-stats "maybe": want true or false`},
		{[]string{"-o"}, "-o needs a value"},
	} {
		args := append([]string{in}, c.args...)
		if c.args[0] != "-o" {
			args = append(args, "-o", out)
		}
		code, stdout, stderr := runCLI(t, args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code != 2 || len(lines) != 2 || lines[0] != "tpconvert: "+c.msg || !strings.HasPrefix(lines[1], "Run 'tpconvert help'") || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and %q", c.args, code, stdout, stderr, c.msg)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Errorf("%v: wrote an output", c.args)
		}
	}
	// batch refuses zero too.
	if code, _, stderr := runCLI(t, "batch", dir, "-o", filepath.Join(dir, "o"), "--bpw", "0"); code != 2 || !strings.Contains(stderr, "want above 0") {
		t.Errorf("batch --bpw 0: exit %d %q", code, stderr)
	}
}

// TestHelpVersionVerifyJSON: "help COMMAND" prints that command's flags,
// "version" the build's module information, "verify --json" a document;
// a batch that finds nothing leaves no output directory.
func TestHelpVersionVerifyJSON(t *testing.T) {
	for _, cmd := range []string{"compress", "restore", "batch", "inspect", "verify"} {
		code, stdout, stderr := runCLI(t, "help", cmd)
		code2, stdout2, _ := runCLI(t, cmd, "--help")
		if code != 0 || code2 != 0 || !strings.HasPrefix(stdout, "Usage: tpconvert ") || !strings.Contains(stdout, cmd) || stdout != stdout2 || stderr != "" {
			t.Errorf("help %s: exit %d, %q; %s --help: exit %d", cmd, code, stdout, cmd, code2)
		}
	}
	if code, _, _ := runCLI(t, "help", "frob"); code != 2 {
		t.Errorf("help frob: exit %d", code)
	}
	code, stdout, _ := runCLI(t, "version")
	if want := "tpconvert " + buildVersion() + "\n"; code != 0 || stdout != want || strings.Contains(stdout, "dev\n") {
		t.Errorf("version: %q, want %q", stdout, want)
	}

	dir, in := fixture(t)
	p := filepath.Join(dir, "m.tpk")
	if code, _, stderr := runCLI(t, in, "-o", p); code != 0 {
		t.Fatal(stderr)
	}
	var res struct {
		OK      bool
		Records int
		Errors  []string
	}
	code, stdout, _ = runCLI(t, "verify", "--json", p)
	if code != 0 || json.Unmarshal([]byte(stdout), &res) != nil || !res.OK || res.Records != 21 || len(res.Errors) != 0 {
		t.Errorf("verify --json: exit %d %q", code, stdout)
	}
	b, _ := os.ReadFile(p)
	b[100] ^= 1
	os.WriteFile(p, b, 0o644)
	code, stdout, _ = runCLI(t, "verify", "--json", p)
	if code != 1 || json.Unmarshal([]byte(stdout), &res) != nil || res.OK || len(res.Errors) != 1 || !strings.Contains(res.Errors[0], "checksum") {
		t.Errorf("verify --json of a damaged file: exit %d %q", code, stdout)
	}

	empty, out := filepath.Join(dir, "empty"), filepath.Join(dir, "out")
	os.Mkdir(empty, 0o755)
	if code, _, _ := runCLI(t, "batch", empty, "-o", out); code != 1 {
		t.Errorf("batch of an empty directory: exit %d", code)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Error("batch of an empty directory left an output directory")
	}
}

// TestRestoreOutputKindAndDType: -o's extension chooses the container (or
// is refused, writing nothing, when the conversion is impossible), and
// --dtype converts every floating-point tensor, not only decoded ones.
func TestRestoreOutputKindAndDType(t *testing.T) {
	dir, in := fixture(t) // BF16 safetensors
	p := filepath.Join(dir, "m.tpk")
	if code, _, stderr := runCLI(t, in, "-o", p); code != 0 {
		t.Fatal(stderr)
	}
	bad := filepath.Join(dir, "m.gguf")
	code, _, stderr := runCLI(t, "restore", p, "-o", bad)
	if code != 1 || !strings.Contains(stderr, "-o "+bad+": cannot restore: a safetensors checkpoint as gguf") {
		t.Errorf("restore of safetensors to .gguf: exit %d %q", code, stderr)
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Error("restore to .gguf left a file")
	}
	if code, _, stderr := runCLI(t, "restore", p, "-o", filepath.Join(dir, "x.gguf"), "--to", "safetensors"); code != 2 || !strings.Contains(stderr, "names a gguf file") {
		t.Errorf("--to disagreeing with -o: exit %d %q", code, stderr)
	}

	out := filepath.Join(dir, "f16.safetensors")
	if code, _, stderr := runCLI(t, "restore", p, "-o", out, "--dtype", "f16"); code != 0 {
		t.Fatal(stderr)
	}
	src, err := convert.OpenSource(out)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if len(src.Tensors()) != 21 {
		t.Errorf("%d tensors restored", len(src.Tensors()))
	}
	for _, ti := range src.Tensors() {
		if ti.DType != tensor.F16 {
			t.Errorf("--dtype f16: %s is %s", ti.Name, ti.DType)
		}
	}

	// A GGUF source restored to a .safetensors name is safetensors.
	g := filepath.Join(dir, "g.tpk")
	if code, _, stderr := runCLI(t, "../../fixtures/tiny-llama.gguf", "-o", g); code != 0 {
		t.Fatal(stderr)
	}
	st := filepath.Join(dir, "g.safetensors")
	if code, _, stderr := runCLI(t, "restore", g, "-o", st, "--dequantize", "f16"); code != 0 {
		t.Fatal(stderr)
	}
	if b, err := os.ReadFile(st); err != nil || len(b) < 9 || b[8] != '{' {
		t.Errorf("%s is not a safetensors file (%v)", st, err)
	}
}

// TestCheckoutSideFiles: compressing a checkout directory never drops its
// other files silently: it refuses, naming them and pointing to batch,
// unless --weights-only says to leave them out.
func TestCheckoutSideFiles(t *testing.T) {
	dir := t.TempDir()
	ck := filepath.Join(dir, "Llama-tiny")
	if err := gen.WriteCheckout(ck, gen.Presets["small"], tensor.BF16, 1, 300<<10); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "m.tpk")
	if code, _, stderr := runCLI(t, ck, "-o", out); code != 0 {
		t.Fatalf("a checkout of weights and index only: exit %d %s", code, stderr)
	}
	os.WriteFile(filepath.Join(ck, "config.json"), []byte(`{}`), 0o644)
	os.MkdirAll(filepath.Join(ck, "sub"), 0o755)
	os.WriteFile(filepath.Join(ck, "sub", "tokenizer.json"), []byte(`{}`), 0o644)
	code, _, stderr := runCLI(t, ck, "-o", out, "--force")
	if code != 1 || !strings.Contains(stderr, "config.json, sub/tokenizer.json") || !strings.Contains(stderr, "tpconvert batch "+ck) {
		t.Errorf("checkout with side files: exit %d %q", code, stderr)
	}
	if code, _, stderr := runCLI(t, ck, "-o", out, "--force", "--weights-only"); code != 0 {
		t.Errorf("--weights-only: exit %d %q", code, stderr)
	}
}

// TestMaxMemoryTooSmall: an explicit --max-memory below what the largest
// tensor needs is refused before any work, naming the tensor and the
// minimum, with --bpw (whose planning comes first) as without; the
// minimum it names is enough.
func TestMaxMemoryTooSmall(t *testing.T) {
	dir, in := fixture(t)
	out := filepath.Join(dir, "m.tpk")
	for _, extra := range [][]string{nil, {"--bpw", "4", "--sample-rows", "8"}} {
		// 16 KiB: below a tenpak_x_v2 payload and 8 rows, which is what
		// it needs in row chunks.
		code, _, stderr := runCLI(t, append([]string{in, "-o", out, "--max-memory", "16KiB"}, extra...)...)
		if code != 2 || !strings.Contains(stderr, `--max-memory 16.0 KiB: tensor "model.`) || !strings.Contains(stderr, "or more") {
			t.Errorf("%v: exit %d %q", extra, code, stderr)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Errorf("%v: wrote an output", extra)
		}
	}
	_, _, stderr := runCLI(t, in, "-o", out, "--max-memory", "16KiB")
	i := strings.Index(stderr, "give --max-memory ")
	if i < 0 {
		t.Fatal(stderr)
	}
	min := strings.Fields(stderr[i+len("give --max-memory "):])[0]
	if code, _, stderr := runCLI(t, in, "-o", out, "--max-memory", min); code != 0 {
		t.Errorf("--max-memory %s: exit %d %q", min, code, stderr)
	}
}

// TestSummaryWording: an exact reconstruction reads "exact", not 999 dB;
// a --merge summary names no shard; a batch that grew warns.
func TestSummaryWording(t *testing.T) {
	exact, lossy := 999.0, 31.25
	re := 0.0
	rep := &convert.Report{Input: "in", Output: "out", Tensors: []convert.TensorReport{
		{Name: "a", Codec: "tenpak_x_v2", Lossy: true, RelErr: &re, SQNRdB: &exact, Shape: []int64{2}},
		{Name: "b", Codec: "tenpak_x_v2", Lossy: true, RelErr: &re, SQNRdB: &lossy, Shape: []int64{2}},
	}, Rate: &convert.RateReport{EstSQNRdB: 999}}
	var b strings.Builder
	printReport(&b, rep, true)
	if s := b.String(); strings.Count(s, "exact") != 2 || strings.Contains(s, "999") || !strings.Contains(s, "31.2") {
		t.Errorf("summary:\n%s", s)
	}
	b.Reset()
	br := &batch.Report{Merge: true, Shards: 2}
	br.Totals.BytesIn, br.Totals.BytesOut = 10, 20
	printBatch(&b, br, false)
	if s := b.String(); strings.Contains(s, "shard 0/2") || !strings.Contains(s, "(merge)") || !strings.Contains(s, "warning: the output is larger") {
		t.Errorf("merge summary:\n%s", s)
	}
}
