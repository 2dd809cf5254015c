package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
		if bpw == 4 {
			checkEstimates(t, out)
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

// checkEstimates: inspect shows, for each tensor of a plan of estimated
// sizes, its payload's bits per weight and the plan's estimated weighted
// SQNR, in JSON and text; the allocation groups configurations without
// the estimates.
func checkEstimates(t *testing.T, path string) {
	t.Helper()
	code, stdout, stderr := runCLI(t, "inspect", "--json", path)
	var rep struct {
		Tensors []struct {
			Name       string   `json:"name"`
			Codec      string   `json:"codec"`
			Params     string   `json:"params"`
			Elems      int64    `json:"elems"`
			Stored     int64    `json:"stored_bytes"`
			PayloadBPW float64  `json:"payload_bpw"`
			Est        *float64 `json:"est_wsqnr_db"`
			SQNR       *float64 `json:"sqnr_db"`
		} `json:"tensors"`
		Allocation []struct {
			Config string `json:"config"`
		} `json:"allocation"`
	}
	if code != 0 || json.Unmarshal([]byte(stdout), &rep) != nil {
		t.Fatalf("inspect --json: exit %d: %s", code, stderr)
	}
	for _, tr := range rep.Tensors {
		if tr.Codec != toyentropy.Name {
			continue
		}
		if tr.Est == nil || tr.SQNR == nil || tr.PayloadBPW <= 0 || tr.PayloadBPW >= float64(tr.Stored)*8/float64(tr.Elems) {
			t.Errorf("%s: payload %.3f bits/w, estimated SQNR %v, measured %v", tr.Name, tr.PayloadBPW, tr.Est, tr.SQNR)
			continue
		}
		t.Logf("%s %s: payload %.3f bits/w, estimated weighted SQNR %.2f dB, measured SQNR %.2f dB", tr.Name, tr.Params, tr.PayloadBPW, *tr.Est, *tr.SQNR)
		// The estimate weighs columns by importance, the measurement
		// does not; on these weights they agree within 1 dB.
		if d := *tr.Est - *tr.SQNR; d > 1 || d < -1 {
			t.Errorf("%s: estimated %.2f dB, measured %.2f dB", tr.Name, *tr.Est, *tr.SQNR)
		}
	}
	for _, a := range rep.Allocation {
		if strings.Contains(a.Config, "est_") {
			t.Errorf("allocation config %q carries the estimate", a.Config)
		}
	}
	code, stdout, stderr = runCLI(t, "inspect", path)
	if code != 0 || !strings.Contains(stdout, "payload b/w") || !strings.Contains(stdout, "est.wSQNR dB") || strings.Contains(stdout, "est_wsqnr") {
		t.Errorf("inspect: exit %d, the table lacks the planned columns or repeats the params:\n%s%s", code, stdout, stderr)
	}
}
