package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBPWFlags: --bpw/--target-size select tenpak_x_v2 over every weight
// matrix, the summary and inspect show the allocation, and bad requests
// are usage errors (exit 2) or a clear error (exit 1) with no output.
func TestBPWFlags(t *testing.T) {
	dir, in := fixture(t)
	out := filepath.Join(dir, "m.tpk")
	code, stdout, stderr := runCLI(t, in, "--bpw", "3", "--sample-rows", "8", "-v", "-o", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{"tenpak_x_v2", "rate control", "allocation", "model.embed_tokens.weight", "lm_head.weight"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, stdout)
		}
	}
	rep := inspectJSON(t, out)
	if rep.Totals.BPWAll > 3 || rep.Totals.BPWAll < 2.94 {
		t.Errorf("--bpw 3 gave %.4f bits/parameter", rep.Totals.BPWAll)
	}
	n := 0
	for _, a := range rep.Allocation {
		n += a.Tensors
	}
	if n != 16 { // 2 layers × 7 projections + embedding + head
		t.Errorf("allocation covers %d tensors, want 16: %+v", n, rep.Allocation)
	}
	code, _, stderr = runCLI(t, "restore", out, "-o", filepath.Join(dir, "r.safetensors"))
	if code != 0 {
		t.Errorf("restore: exit %d: %s", code, stderr)
	}

	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--bpw", "3", "--target-size", "1MiB"}, 2, "not both"},
		{[]string{"--bpw", "3", "--codec", "int4"}, 2, "cannot be sized"},
		{[]string{"--bpw", "-2"}, 2, "--bpw"},
		{[]string{"--bpw", "NaN"}, 2, "--bpw"},
		{[]string{"--target-size", "-5"}, 2, "target-size"},
		{[]string{"--bpw", "3", "--sample-rows", "-1"}, 2, "sample-rows"},
		{[]string{"--bpw", "0.2"}, 1, "smallest file"},
		{[]string{"--target-size", "10KiB"}, 1, "smallest file"},
	} {
		o := filepath.Join(dir, "bad.tpk")
		code, _, stderr := runCLI(t, append([]string{in, "-o", o, "--sample-rows", "4"}, c.args...)...)
		if code != c.code || !strings.Contains(stderr, c.msg) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d mentioning %q", c.args, code, stderr, c.code, c.msg)
		}
		if _, err := os.Stat(o); !os.IsNotExist(err) {
			t.Errorf("%v: left an output file", c.args)
		}
	}
	// --codec tenpak_x_v2 without a size: every weight, default grid.
	code, stdout, stderr = runCLI(t, in, "--codec", "tenpak_x_v2", "-v", "-o", filepath.Join(dir, "d.tpk"))
	if code != 0 || !strings.Contains(stdout, "uniform:4/32") || !strings.Contains(stdout, "lm_head.weight") {
		t.Errorf("--codec tenpak_x_v2: exit %d\n%s%s", code, stdout, stderr)
	}
}

func TestBatchBPW(t *testing.T) {
	dir, in := fixture(t)
	src := filepath.Join(dir, "models", "m")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(in, filepath.Join(src, "model.safetensors")); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	code, _, stderr := runCLI(t, "batch", src, "-o", out, "--bpw", "4", "--sample-rows", "8")
	if code != 0 {
		t.Fatalf("batch --bpw 4: exit %d: %s", code, stderr)
	}
	b, err := os.ReadFile(filepath.Join(out, "m", "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"bpw": 4`) || !strings.Contains(string(b), "tenpak_x_v2") {
		t.Errorf("manifest does not record tenpak_x_v2 at 4 bits/parameter:\n%s", b)
	}
	if v := `"tpconvert_version": "` + buildVersion() + `"`; !strings.Contains(string(b), v) {
		t.Errorf("manifest does not record %s:\n%s", v, b)
	}
	code, _, stderr = runCLI(t, "batch", src, "-o", out, "--target-size", "1MiB")
	if code != 2 {
		t.Errorf("batch --target-size: exit %d (%s), want a usage error", code, stderr)
	}
}
