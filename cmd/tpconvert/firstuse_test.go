package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
	// f16 cannot shrink BF16: every tensor is stored unchanged, the
	// container's index makes the file larger, and the summary says so.
	code, stdout, _ = runCLI(t, in, "--codec", "f16", "-o", filepath.Join(dir, "c.tpk"))
	if code != 0 || !strings.Contains(stdout, "warning          the output is larger than the input") ||
		!strings.Contains(stdout, "14 selected tensors stored unchanged") {
		t.Errorf("no warning for a larger output:\n%s", stdout)
	}
}
