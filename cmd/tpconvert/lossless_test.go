package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLosslessFlag: --lossless stores every tensor with the lossless
// codec, the summary and inspect show the ratios, restore gives the file
// back byte for byte, and combinations that cannot hold are usage errors.
func TestLosslessFlag(t *testing.T) {
	dir, in := fixture(t)
	out := filepath.Join(dir, "m.tpk")
	code, stdout, stderr := runCLI(t, in, "--lossless", "-o", out)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "lossless ") || !strings.Contains(stdout, "bit-exact") || !strings.Contains(stdout, "% of the source") {
		t.Errorf("summary:\n%s", stdout)
	}
	code, stdout, stderr = runCLI(t, "inspect", out)
	if code != 0 {
		t.Fatalf("inspect: exit %d: %s", code, stderr)
	}
	if !strings.Contains(stdout, "ratio") || strings.Count(stdout, " lossless ") < 3 || !strings.Contains(stdout, "bit-exact") {
		t.Errorf("inspect:\n%s", stdout)
	}
	back := filepath.Join(dir, "back.safetensors")
	if code, _, stderr := runCLI(t, "restore", out, "-o", back); code != 0 {
		t.Fatalf("restore: exit %d: %s", code, stderr)
	}
	a, _ := os.ReadFile(in)
	b, _ := os.ReadFile(back)
	if len(a) == 0 || !bytes.Equal(a, b) {
		t.Error("restored file differs from the source")
	}
	for _, args := range [][]string{
		{in, "--lossless", "--codec", "int8"},
		{in, "--lossless", "--bpw", "4"},
		{in, "--lossless", "--target-size", "1MiB"},
	} {
		code, _, stderr := runCLI(t, append(args, "-o", filepath.Join(dir, "x.tpk"))...)
		if code != 2 || !strings.Contains(stderr, "--lossless") {
			t.Errorf("%v: exit %d, %s", args, code, stderr)
		}
	}
}
