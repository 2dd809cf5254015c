package main

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/tpconvert/tpconvert/fixtures/gen"
	"github.com/tpconvert/tpconvert/internal/toyentropy"
	"github.com/tpconvert/tpconvert/tensor"
)

func init() { toyentropy.Register() }

// TestToyEntropyRate: a codec whose payload size depends on the values
// (codec.SizeEstimator, registered by a test) is sized by --bpw and
// --target-size end to end: the file lands within 2 % below the bits asked
// for, never above, and within the target size.
func TestToyEntropyRate(t *testing.T) {
	// The tiny preset: on the small one a file's fixed overhead bound
	// (some 60 bytes of slack per record, 21 records) is itself 1 %.
	dir := t.TempDir()
	in := filepath.Join(dir, "model.safetensors")
	if err := gen.WriteSafetensors(in, gen.Presets["tiny"], tensor.BF16, 1); err != nil {
		t.Fatal(err)
	}
	for _, bpw := range []float64{2.5, 4, 6} {
		out := filepath.Join(dir, fmt.Sprintf("e%g.tpk", bpw))
		code, _, stderr := runCLI(t, in, "--codec", toyentropy.Name, "--bpw", fmt.Sprint(bpw), "-o", out)
		if code != 0 {
			t.Fatalf("--bpw %g: exit %d: %s", bpw, code, stderr)
		}
		rep := inspectJSON(t, out)
		n := 0
		for _, tr := range rep.Tensors {
			if tr.Codec == toyentropy.Name {
				n++
			}
		}
		if n != 16 { // 2 layers × 7 projections + embedding + head
			t.Errorf("--bpw %g: %d tensors coded by %s, want 16", bpw, n, toyentropy.Name)
		}
		got := rep.Totals.BPWAll
		t.Logf("--codec %s --bpw %g: %.4f bits/parameter", toyentropy.Name, bpw, got)
		if got > bpw || got < 0.98*bpw {
			t.Errorf("--bpw %g gave %.4f bits/parameter, want within 2 %% below", bpw, got)
		}
		if code, _, stderr := runCLI(t, "restore", out, "-o", filepath.Join(dir, "r.safetensors"), "--force"); code != 0 {
			t.Errorf("--bpw %g: restore: exit %d: %s", bpw, code, stderr)
		}
	}
	for _, target := range []int64{500_000, 1_200_000} {
		out := filepath.Join(dir, fmt.Sprintf("t%d.tpk", target))
		code, _, stderr := runCLI(t, in, "--codec", toyentropy.Name, "--target-size", fmt.Sprint(target), "-o", out)
		if code != 0 {
			t.Fatalf("--target-size %d: exit %d: %s", target, code, stderr)
		}
		st, err := os.Stat(out)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("--target-size %d: %d bytes", target, st.Size())
		if st.Size() > target || st.Size() < target*98/100 {
			t.Errorf("--target-size %d gave %d bytes", target, st.Size())
		}
	}
}
