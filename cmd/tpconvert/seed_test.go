package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpconvert/tpconvert/formats/safetensors"
)

// TestSeedReachesRateControl: --seed changes a --bpw output whose plan
// uses the seeded Hadamard-rotated grids (normal:b/G): the file differs,
// and so does the restored value of at least one tensor coded with such a
// grid. A tensor coded with the same unseeded grid (uniform, symmetric,
// f16) under both seeds restores to the same values: the seed is only the
// rotation's.
func TestSeedReachesRateControl(t *testing.T) {
	dir, in := fixture(t)
	type coded struct {
		params   map[string]string
		restored map[string][]byte
		file     []byte
	}
	convert := func(bpw, seed string) coded {
		out := filepath.Join(dir, "s"+seed+".tpk")
		if code, _, stderr := runCLI(t, in, "--bpw", bpw, "--sample-rows", "8", "--seed", seed, "--force", "-o", out); code != 0 {
			t.Fatalf("--seed %s: exit %d: %s", seed, code, stderr)
		}
		rep := inspectJSON(t, out)
		c := coded{params: map[string]string{}, restored: map[string][]byte{}}
		for _, tr := range rep.Tensors {
			c.params[tr.Name] = tr.Params
		}
		rest := filepath.Join(dir, "s"+seed+".safetensors")
		if code, _, stderr := runCLI(t, "restore", out, "--force", "-o", rest); code != 0 {
			t.Fatalf("restore: exit %d: %s", code, stderr)
		}
		r, err := safetensors.Open(rest)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		for i, ti := range r.Tensors() {
			b, err := r.Bytes(i)
			if err != nil {
				t.Fatal(err)
			}
			c.restored[ti.Name] = bytes.Clone(b)
		}
		if c.file, err = os.ReadFile(out); err != nil {
			t.Fatal(err)
		}
		return c
	}
	normal, normalDiffer, other := 0, 0, 0
	// At 3 bits the plan takes normal grids; at 7 uniform ones.
	for _, bpw := range []string{"3", "7"} {
		a, b := convert(bpw, "0"), convert(bpw, "7")
		if bytes.Equal(a.file, b.file) {
			t.Errorf("--bpw %s --seed 7 wrote the same file as --seed 0 (the seed is in every payload header)", bpw)
		}
		for name, p := range a.params {
			if b.params[name] != p || p == "" {
				continue
			}
			same := bytes.Equal(a.restored[name], b.restored[name])
			if strings.HasPrefix(p, "normal:") {
				normal++
				if !same {
					normalDiffer++
				}
				continue
			}
			other++
			if !same {
				t.Errorf("--bpw %s: %s (%s, no rotation) restores differently under --seed 7", bpw, name, p)
			}
		}
	}
	if normal == 0 || other == 0 {
		t.Fatalf("%d tensors with the same normal grid and %d with the same other grid under both seeds; want some of each", normal, other)
	}
	if normalDiffer == 0 {
		t.Errorf("none of the %d tensors with a normal grid restores differently under --seed 7", normal)
	}
	t.Logf("%d tensors with a normal grid (%d differ), %d with another grid", normal, normalDiffer, other)
}

// inspected is the part of "inspect --json" the tests read.
type inspected struct {
	Codec   string `json:"codec"`
	Tensors []struct {
		Name   string `json:"name"`
		Codec  string `json:"codec"`
		Params string `json:"params"`
	} `json:"tensors"`
	Totals struct {
		BPWAll float64 `json:"bpw_all"`
	} `json:"totals"`
	Allocation []struct {
		Config  string `json:"config"`
		Tensors int    `json:"tensors"`
	} `json:"allocation"`
}

// inspectJSON runs "inspect --json path".
func inspectJSON(t *testing.T, path string) inspected {
	t.Helper()
	code, stdout, stderr := runCLI(t, "inspect", "--json", path)
	var rep inspected
	if code != 0 || json.Unmarshal([]byte(stdout), &rep) != nil {
		t.Fatalf("inspect %s: exit %d: %s", path, code, stderr)
	}
	return rep
}
