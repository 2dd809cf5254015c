package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tpconvert/tpconvert/fixtures/gen"
	"github.com/tpconvert/tpconvert/tensor"
)

// runCLITimeout runs the command and fails the test if it has not
// returned within limit (a hang).
func runCLITimeout(t *testing.T, limit time.Duration, args ...string) (int, string, string) {
	t.Helper()
	type res struct {
		code     int
		out, err string
	}
	done := make(chan res, 1)
	go func() {
		var out, errb bytes.Buffer
		code := run(args, &out, &errb)
		done <- res{code, out.String(), errb.String()}
	}()
	select {
	case r := <-done:
		return r.code, r.out, r.err
	case <-time.After(limit):
		t.Fatalf("%v: still running after %v", args, limit)
		return 0, "", ""
	}
}

// TestPathsAreNotPatterns checks that no user path is used as a glob
// pattern: a checkout directory named ck[v1] is read, and compressing the
// directory m* reads m*'s weights, not those of its sibling mZ.
func TestPathsAreNotPatterns(t *testing.T) {
	dir := t.TempDir()
	ck := filepath.Join(dir, "ck[v1]")
	star := filepath.Join(dir, "m*")
	other := filepath.Join(dir, "mZ")
	for i, d := range []string{ck, star, other} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := gen.WriteSafetensors(filepath.Join(d, "model.safetensors"), gen.Presets["tiny"], tensor.BF16, uint64(i+1)); err != nil {
			t.Fatal(err)
		}
	}
	for _, in := range []string{ck, star} {
		out := filepath.Join(dir, filepath.Base(in)+".tpk")
		if code, _, stderr := runCLI(t, "compress", in, "-o", out, "--codec", "none"); code != 0 {
			t.Fatalf("compress %s: exit %d: %s", in, code, stderr)
		}
		back := filepath.Join(dir, filepath.Base(in)+".restored.safetensors")
		if code, _, stderr := runCLI(t, "restore", out, "-o", back); code != 0 {
			t.Fatalf("restore %s: exit %d: %s", out, code, stderr)
		}
		got, err := os.ReadFile(back)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := os.ReadFile(filepath.Join(in, "model.safetensors"))
		if !bytes.Equal(got, want) {
			wrong, _ := os.ReadFile(filepath.Join(other, "model.safetensors"))
			t.Errorf("%s: restored weights differ from its own (same as mZ's: %v)", in, bytes.Equal(got, wrong))
		}
	}
}

// TestFIFOInputsFailFast checks that a FIFO standing where an input file
// is expected (the input itself, a shard, an index file, the GGUF of a
// checkout) is refused at once instead of blocking in open(2).
func TestFIFOInputsFailFast(t *testing.T) {
	mk := func(t *testing.T, files ...string) (dir, ck string) {
		dir = t.TempDir()
		ck = filepath.Join(dir, "ck")
		if err := os.Mkdir(ck, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			p := filepath.Join(ck, f)
			if strings.HasPrefix(f, "fifo:") {
				if err := syscall.Mkfifo(filepath.Join(ck, f[5:]), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if err := gen.WriteSafetensors(p, gen.Presets["tiny"], tensor.BF16, 1); err != nil {
				t.Fatal(err)
			}
		}
		return dir, ck
	}
	cases := []struct {
		name  string
		files []string
		in    string // relative to ck; "" is ck itself
	}{
		{"input", []string{"fifo:model.safetensors"}, "model.safetensors"},
		{"shard", []string{"model-00001-of-00002.safetensors", "fifo:model-00002-of-00002.safetensors"}, ""},
		{"index", []string{"model.safetensors", "fifo:model.safetensors.index.json"}, ""},
		{"gguf", []string{"fifo:model.gguf"}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir, ck := mk(t, c.files...)
			in := filepath.Join(ck, c.in)
			for _, cmd := range [][]string{{"compress", in, "-o", filepath.Join(dir, "out.tpk")}, {"inspect", in}} {
				code, _, stderr := runCLITimeout(t, 20*time.Second, cmd...)
				if code != 1 || !strings.Contains(stderr, "not a regular file") {
					t.Errorf("%s: exit %d, want 1 naming a file that is not regular: %q", cmd[0], code, stderr)
				}
			}
			if _, err := os.Stat(filepath.Join(dir, "out.tpk")); err == nil {
				t.Error("compress left out.tpk")
			}
		})
	}
}
