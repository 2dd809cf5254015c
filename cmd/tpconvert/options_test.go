package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCodecOptionsRefusedOrHonoured: a codec refuses a rank or group size
// it does not take (a usage error, no output), and per-tensor workers,
// which every codec takes, do not change the bytes of a --bpw output.
func TestCodecOptionsRefusedOrHonoured(t *testing.T) {
	dir, in := fixture(t)
	for _, args := range [][]string{
		{"--codec", "int8", "--rank", "4"},
		{"--codec", "f16", "--group-size", "64"},
		{"--codec", "lossless", "--rank", "2"},
		{"--bpw", "4", "--group-size", "64"},
	} {
		out := filepath.Join(dir, "refused.tpk")
		code, _, stderr := runCLI(t, append([]string{in, "-o", out}, args...)...)
		if code != 2 || !strings.Contains(stderr, "takes no") {
			t.Errorf("%v: exit %d, stderr %q; want a usage error saying the codec takes no such option", args, code, stderr)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Errorf("%v: left an output file", args)
		}
	}
	var files [][]byte
	for _, w := range []string{"1", "2"} {
		out := filepath.Join(dir, "w"+w+".tpk")
		if code, _, stderr := runCLI(t, in, "--bpw", "3", "--sample-rows", "8", "--workers", w, "-o", out); code != 0 {
			t.Fatalf("--workers %s: exit %d: %s", w, code, stderr)
		}
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, b)
	}
	if !bytes.Equal(files[0], files[1]) {
		t.Error("--bpw 3 output depends on --workers")
	}
}
