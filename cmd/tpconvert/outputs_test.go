package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestDefaultCompressOutput checks the default output names: a file's
// extension becomes .tpk, and a checkout directory m/ becomes m.tpk beside
// it.
func TestDefaultCompressOutput(t *testing.T) {
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "ckpt")
	if err := os.Mkdir(ckpt, 0o755); err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{
		ckpt:                                  ckpt + ".tpk",
		ckpt + string(filepath.Separator):     ckpt + ".tpk",
		filepath.Join(dir, "m.safetensors"):   filepath.Join(dir, "m.tpk"),
		filepath.Join(dir, "model.Q4_0.gguf"): filepath.Join(dir, "model.Q4_0.tpk"),
	} {
		if got := defaultCompressOutput(in); got != want {
			t.Errorf("defaultCompressOutput(%q) = %q, want %q", in, got, want)
		}
	}
}
