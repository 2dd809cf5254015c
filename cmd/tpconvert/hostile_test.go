package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/fixtures/gen"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/formats/tpk"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/internal/tmpfs"
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

// hostileCases are crafted inputs of the second robustness round: .tpk
// files whose source metadata asks restore to write far more than the file
// justifies or outside the output, and sources that a .tpk could not
// reproduce faithfully.
func hostileCases(t testing.TB) []malformed {
	tp := tpkFiles(t)
	gg := ggGood()
	meta := func(name string, f func(ix *tpk.Index)) []byte { return tpkWithIndexJSON(t, tp[name], f) }
	ggAlign := func(align uint32) []byte {
		kv := append(ggKVString("general.architecture", "llama"), ggKVU32("general.alignment", align)...)
		return ggBuild(3, 3, 2, kv, ggTensors(), 32, ggData()).b
	}
	good := tp["int4"]
	return []malformed{
		// class 1: sizes implied by the stored source metadata
		{name: "tpk gguf tail_pad 2^40", file: "m.tpk", data: meta("gguf", func(ix *tpk.Index) { ix.Source.GGUF.TailPad = 1 << 40 }), fail: tpkCmds, want: "tail padding"},
		{name: "tpk gguf tail_pad negative", file: "m.tpk", data: meta("gguf", func(ix *tpk.Index) { ix.Source.GGUF.TailPad = -5 }), fail: tpkCmds, want: "tail padding"},
		{name: "tpk gguf alignment 2^30", file: "m.tpk", data: meta("gguf", func(ix *tpk.Index) { ix.Source.GGUF.Alignment = 1 << 30 }), fail: tpkCmds, want: "alignment"},
		{name: "tpk gguf alignment not a power of two", file: "m.tpk", data: meta("gguf", func(ix *tpk.Index) { ix.Source.GGUF.Alignment = 48 }), fail: tpkCmds, want: "alignment"},
		{name: "tpk gguf alignment disagrees with kv", file: "m.tpk", data: meta("gguf", func(ix *tpk.Index) { ix.Source.GGUF.Alignment = 64 }), fail: tpkCmds, want: "alignment"},
		{name: "tpk gguf without gguf metadata", file: "m.tpk", data: meta("gguf", func(ix *tpk.Index) { ix.Source.GGUF = nil }), fail: tpkCmds, want: "gguf metadata"},
		{name: "tpk gguf two files", file: "m.tpk", data: meta("gguf", func(ix *tpk.Index) { ix.Source.Files = append(ix.Source.Files, ix.Source.Files[0]) }), fail: tpkCmds, want: "2 files"},
		{name: "tpk gguf info order short", file: "m.tpk", data: meta("gguf", func(ix *tpk.Index) { ix.GGUFInfoOrder = []string{"a", "b"} }), fail: tpkCmds, want: "info order"},
		{name: "tpk st header_pad 10^8", file: "m.tpk", data: meta("none", func(ix *tpk.Index) { ix.Source.Files[0].HeaderPad = 100_000_000 }), fail: tpkCmds, want: "header padding"},
		{name: "tpk st file name with a path", file: "m.tpk", data: meta("ckpt", func(ix *tpk.Index) { ix.Source.Files[0].Name = "../../escape.safetensors" }), fail: tpkCmds, want: "plain file name"},
		{name: "tpk st index name with a path", file: "m.tpk", data: meta("ckpt", func(ix *tpk.Index) { ix.Source.IndexName = "/tmp/x.json" }), fail: tpkCmds, want: "plain file name"},
		{name: "tpk st 70000 files", file: "m.tpk", data: meta("none", func(ix *tpk.Index) {
			for i := range 70000 {
				ix.Source.Files = append(ix.Source.Files, formats.FileMeta{Name: fmt.Sprintf("f%d.safetensors", i)})
			}
		}), fail: tpkCmds, want: "source files"},
		// class 9: bytes verify used to ignore
		{name: "tpk reserved header bytes", file: "m.tpk", data: with32(good, 12, 1), fail: tpkCmds, want: "reserved"},
		{name: "tpk bytes after the index JSON", file: "m.tpk", data: tpkWithIndex(good, func(s string) string { return s + ` {"x":1}` }), fail: tpkCmds, want: "after the index"},
		{name: "tpk tensor name not UTF-8", file: "m.tpk", data: tpkWithIndex(good, func(s string) string {
			return strings.Replace(s, `"model.norm.weight"`, "\"model.norm.\xff\"", 1)
		}), fail: recCmds, ok: []string{"inspect"}, want: "record names"},
		// class 6: GGUF files a .tpk could not reproduce byte for byte
		{name: "gguf alignment 2^20", file: "m.gguf", data: ggAlign(1 << 20), fail: srcCmds, want: "limit"},
		{name: "gguf non-zero tail", file: "m.gguf", data: append(slices.Clone(gg.b), 1, 2, 3), fail: []string{"compress"}, ok: []string{"inspect"}, want: "not all zero"},
		{name: "gguf non-zero padding", file: "m.gguf", data: func() []byte {
			b := slices.Clone(gg.b)
			b[gg.dataAt+32+1] = 0 // inside b's data: keep
			b[gg.dataAt-1] = 7    // padding before the data section
			return b
		}(), fail: []string{"compress"}, ok: []string{"inspect"}, want: "padding"},
		{name: "gguf tail beyond 64 KiB", file: "m.gguf", data: append(slices.Clone(gg.b), make([]byte, 70000)...), fail: []string{"compress"}, ok: []string{"inspect"}, want: "tail padding"},
		{name: "gguf tensor name not UTF-8", file: "m.gguf", data: ggBuild(3, 3, 2, ggKV(), func() []ggTensor {
			ts := ggTensors()
			ts[1].name = "b\xff"
			return ts
		}(), 32, ggData()).b, fail: []string{"compress"}, ok: []string{"inspect"}, want: "utf-8"},
		{name: "tpk st original header garbage", file: "m.tpk", data: meta("none", func(ix *tpk.Index) { ix.Source.Files[0].Header = []byte("{garbage") }), fail: recCmds, ok: []string{"inspect"}, want: "header"},
		{name: "tpk gguf info order on a safetensors source", file: "m.tpk", data: meta("none", func(ix *tpk.Index) { ix.Source.GGUF = &formats.GGUFMeta{Alignment: 32} }), fail: tpkCmds, want: "gguf metadata"},
	}
}

// TestHostileInputs runs every command concerned on each hostileCases
// input, with the checks of TestMalformedInputs: exit 1, a one-line error
// naming the file and the problem, bounded allocation, nothing left behind.
func TestHostileInputs(t *testing.T) {
	for _, c := range hostileCases(t) {
		t.Run(c.name, func(t *testing.T) {
			for _, cmd := range c.fail {
				checkMalformed(t, c, cmd, true)
			}
			for _, cmd := range c.ok {
				checkMalformed(t, c, cmd, false)
			}
		})
	}
}

// TestOutputPaths checks the messages and exit codes for output paths
// that cannot name a new file, and that none of them creates a directory.
func TestOutputPaths(t *testing.T) {
	dir, in := fixture(t)
	existing := filepath.Join(dir, "existing")
	if err := os.Mkdir(existing, 0o755); err != nil {
		t.Fatal(err)
	}
	tpkPath := filepath.Join(dir, "m.tpk")
	if code, _, stderr := runCLI(t, "compress", in, "-o", tpkPath); code != 0 {
		t.Fatalf("compress: %s", stderr)
	}
	missing := filepath.Join(dir, "nonexistent-dir")
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"compress", in, "-o", filepath.Join(missing, "x.tpk")}, "does not exist"},
		{[]string{"compress", in, "-o", existing, "--force"}, "is a directory"},
		{[]string{"compress", in, "-o", existing}, "is a directory"},
		{[]string{"compress", in, "-o", filepath.Join(dir, "newdir") + "/"}, "names a directory"},
		{[]string{"compress", in, "-o", filepath.Join(in, "x.tpk")}, "not a directory"},
		{[]string{"restore", tpkPath, "-o", filepath.Join(missing, "x.safetensors")}, "does not exist"},
		{[]string{"restore", tpkPath, "-o", existing, "--force"}, "is a directory"},
		{[]string{"restore", tpkPath, "-o", filepath.Join(dir, "newdir") + "/"}, "names a directory"},
	}
	for _, c := range cases {
		code, _, stderr := runCLI(t, c.args...)
		if code != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, want 1 with %q: %q", c.args, code, c.want, stderr)
		}
	}
	for _, p := range []string{missing, filepath.Join(dir, "newdir")} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s was created", p)
		}
	}
	if es, _ := os.ReadDir(existing); len(es) != 0 {
		t.Errorf("files written into %s", existing)
	}
}

// TestConcurrentOutputsDoNotReplace runs two compressions to the same new
// output without --force at once: exactly one succeeds and the other
// says the output exists (a check before the final rename let both exit
// 0, the second silently replacing the first).
func TestConcurrentOutputsDoNotReplace(t *testing.T) {
	for round := range 3 {
		dir, in := fixture(t)
		out := filepath.Join(dir, "m.tpk")
		codes := make(chan string, 2)
		for range 2 {
			go func() {
				var o, e bytes.Buffer
				code := run([]string{"compress", in, "-o", out, "--codec", "none", "--workers", "1"}, &o, &e)
				codes <- fmt.Sprintf("%d %s", code, e.String())
			}()
		}
		a, b := <-codes, <-codes
		ok := 0
		for _, r := range []string{a, b} {
			switch {
			case strings.HasPrefix(r, "0 "):
				ok++
			case !strings.HasPrefix(r, "1 ") || !strings.Contains(r, "output exists"):
				t.Errorf("round %d: %q, want exit 0 or exit 1 saying the output exists", round, r)
			}
		}
		if ok != 1 {
			t.Errorf("round %d: %d of 2 compressions succeeded, want 1: %q, %q", round, ok, a, b)
		}
		noTempsIn(t, dir)
	}
}

// TestOutputErrorsNameTheOutput fills a small file system and makes one
// read-only, and checks that compress's error names the output path the
// user gave, not a temporary file.
func TestOutputErrorsNameTheOutput(t *testing.T) {
	_, in := fixture(t)
	full := tmpfs.Mount(t, 64<<10, "; convert's disk-full tests cover the same path")
	ro := tmpfs.Mount(t, 1<<20, "")
	if err := syscall.Mount("", ro, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Skipf("cannot remount read-only: %v", err)
	}
	for _, c := range []struct{ dir, want string }{{full, "no space left"}, {ro, "read-only file system"}} {
		out := filepath.Join(c.dir, "m.tpk")
		code, _, stderr := runCLI(t, "compress", in, "-o", out, "--codec", "none")
		if code != 1 || !strings.Contains(stderr, out) || !strings.Contains(stderr, c.want) || strings.Contains(stderr, atomicfile.TempPrefix) {
			t.Errorf("exit %d, want 1 with an error naming %s (%s): %q", code, out, c.want, stderr)
		}
		noTempsIn(t, c.dir)
	}
}

// writeOneTensor writes a safetensors file holding one projection matrix
// of the given dtype and values.
func writeOneTensor(t *testing.T, path string, dt tensor.DType, rows, cols int, val func(i int) float32) {
	t.Helper()
	x := make([]float32, rows*cols)
	for i := range x {
		x[i] = val(i)
	}
	raw := make([]byte, len(x)*int(dt.BlockBytes()))
	if err := tensor.FromFloat32(raw, dt, x); err != nil {
		t.Fatal(err)
	}
	hdr := fmt.Sprintf(`{"model.layers.0.mlp.up_proj.weight":{"dtype":%q,"shape":[%d,%d],"data_offsets":[0,%d]}}`, dt, rows, cols, len(raw))
	if err := os.WriteFile(path, append(stFile(hdr, nil), raw...), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRateControlRefusesUnrepresentable checks that --bpw on a model whose
// only selected tensor holds values beyond FP16 fails with a clear error
// (it used to panic in tenpak_x_v2), and that beside a normal tensor such
// a tensor is stored unchanged.
func TestRateControlRefusesUnrepresentable(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "m.safetensors")
	writeOneTensor(t, in, tensor.F32, 8, 32, func(i int) float32 { return 1e6 * float32(i%5-2) })
	code, _, stderr := runCLI(t, "compress", in, "-o", filepath.Join(dir, "m.tpk"), "--bpw", "4")
	if code != 1 || !strings.Contains(stderr, "cannot represent") {
		t.Errorf("exit %d, want 1 saying tenpak_x_v2 cannot represent the tensor: %q", code, stderr)
	}
	onlyInputLeft(t, "compress", dir, "m.safetensors")

	// Half the parameters stay F32 (32 bits each): 24 bits/parameter
	// leaves the other half room.
	hdr := `{"model.layers.0.mlp.up_proj.weight":{"dtype":"F32","shape":[64,256],"data_offsets":[0,65536]},` +
		`"model.layers.0.mlp.down_proj.weight":{"dtype":"F32","shape":[64,256],"data_offsets":[65536,131072]}}`
	var data []byte
	for i := range 32768 {
		v := float32(math.Sin(float64(i))) * 0.1
		if i < 16384 {
			v *= 1e7
		}
		data = binary.LittleEndian.AppendUint32(data, math.Float32bits(v))
	}
	if err := os.WriteFile(in, stFile(hdr, data), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "m.tpk")
	code, stdout, stderr := runCLI(t, "compress", in, "-o", out, "--bpw", "24", "--force")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	r, err := tpk.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, e := range r.Entries() {
		want := "tenpak_x_v2"
		if strings.Contains(e.Name, "up_proj") {
			want = "none or lossless" // bit-exact
		}
		if e.Codec != want && !(strings.Contains(e.Name, "up_proj") && codec.IsByteDecoder(e.CodecID)) {
			t.Errorf("%s: codec %s, want %s\n%s", e.Name, e.Codec, want, stdout)
		}
	}
}

// TestFallbacksAreReported compresses tensors that a codec cannot
// represent faithfully (values beyond FP16, values below it, an F16
// source at ±65504 that int8 would restore as ±Inf, a constant tensor)
// and checks that each is either coded within the codec's bound or
// stored unchanged with a note in the summary, that no command panics,
// and that the restored file is bit-exact whenever the tensor was stored
// unchanged.
func TestFallbacksAreReported(t *testing.T) {
	alt := func(v float32) func(int) float32 {
		return func(i int) float32 { return v * float32(1-2*(i%2)) * float32(1+i%3) / 3 }
	}
	cases := []struct {
		name     string
		dt       tensor.DType
		rows     int
		val      func(int) float32
		args     []string
		fallback bool // must be stored unchanged
	}{
		{"f16 beyond FP16", tensor.F32, 8, alt(1e6), []string{"--codec", "f16"}, true},
		{"bf16 at 3.4e38", tensor.F32, 8, alt(3.4e38), []string{"--codec", "bf16"}, true},
		{"f16 below FP16", tensor.F32, 8, alt(1e-9), []string{"--codec", "f16"}, true},
		{"int8 on F16 at 65504", tensor.F16, 8, alt(65504), []string{"--codec", "int8"}, false},
		{"int4 beyond FP16", tensor.F32, 8, alt(1e6), []string{"--codec", "int4"}, true},
		{"tenpak_x_v1 outlier 3.4e38", tensor.F32, 8, func(i int) float32 {
			if i == 5 {
				return 3.4e38
			}
			return float32(i%7) * 0.01
		}, []string{"--codec", "tenpak_x_v1"}, true},
		{"tenpak_x_v2 beyond FP16", tensor.F32, 8, alt(1e6), []string{"--codec", "tenpak_x_v2"}, true},
		{"tenpak_x_v2 constant 64x1", tensor.F32, 64, func(int) float32 { return 0.3 }, []string{"--codec", "tenpak_x_v2"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			in := filepath.Join(dir, "m.safetensors")
			cols := 32
			if c.rows == 64 {
				cols = 1
			}
			writeOneTensor(t, in, c.dt, c.rows, cols, c.val)
			out := filepath.Join(dir, "m.tpk")
			code, stdout, stderr := runCLI(t, append([]string{"compress", in, "-o", out, "--layers", "all"}, c.args...)...)
			if code != 0 {
				t.Fatalf("compress: exit %d: %s", code, stderr)
			}
			back := filepath.Join(dir, "back.safetensors")
			if code, _, stderr := runCLI(t, "restore", out, "-o", back); code != 0 {
				t.Fatalf("restore: exit %d: %s", code, stderr)
			}
			r, err := tpk.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			e := r.Entries()[0]
			r.Close()
			src, _ := os.ReadFile(in)
			got, _ := os.ReadFile(back)
			switch {
			case codec.IsByteDecoder(e.CodecID): // none, or lossless when smaller
				if !strings.Contains(stdout, "stored unchanged") && !strings.Contains(stdout, "stored with lossless") {
					t.Errorf("stored unchanged, but the summary does not say so:\n%s", stdout)
				}
				if !bytes.Equal(src, got) {
					t.Error("stored unchanged, but the restored file differs")
				}
			case c.fallback:
				t.Errorf("coded with %s (stats %+v), want stored unchanged", e.Codec, e.Stats)
			default:
				if e.Stats == nil || !(e.Stats.RelErr < 0.3) {
					t.Errorf("coded with %s at stats %+v", e.Codec, e.Stats)
				}
				x := make([]float32, c.rows*cols)
				tensor.ToFloat32(x, c.dt, got[len(got)-len(x)*int(c.dt.BlockBytes()):])
				for i, v := range x {
					if v-v != 0 {
						t.Fatalf("restored element %d is %v", i, v)
					}
				}
			}
		})
	}
}

// tinyCheckout creates the checkout dir/models/name holding the tiny preset
// in BF16 as the weight file file, and returns its path.
func tinyCheckout(t *testing.T, dir, name, file string) string {
	t.Helper()
	ck := filepath.Join(dir, "models", name)
	if err := os.MkdirAll(ck, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := gen.WriteSafetensors(filepath.Join(ck, file), gen.Presets["tiny"], tensor.BF16, 1); err != nil {
		t.Fatal(err)
	}
	return ck
}

// TestManifestWithoutWeights checks that a batch model directory whose
// manifest lists no weights ("weights": null, [] or missing) is refused
// rather than restored as its side files alone with exit 0.
func TestManifestWithoutWeights(t *testing.T) {
	dir := t.TempDir()
	models := tinyCheckout(t, dir, "alpha", "model.safetensors")
	os.WriteFile(filepath.Join(models, "config.json"), []byte(`{}`), 0o644)
	out := filepath.Join(dir, "out")
	if code, _, stderr := runCLI(t, "batch", filepath.Dir(models), "-o", out, "--codec", "none"); code != 0 {
		t.Fatalf("batch: %s", stderr)
	}
	man := filepath.Join(out, "alpha", "manifest.json")
	orig, err := os.ReadFile(man)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(orig, &m); err != nil {
		t.Fatal(err)
	}
	for _, w := range []any{nil, []any{}, "missing"} {
		if w == "missing" {
			delete(m, "weights")
		} else {
			m["weights"] = w
		}
		b, _ := json.Marshal(m)
		if err := os.WriteFile(man, b, 0o644); err != nil {
			t.Fatal(err)
		}
		restored := filepath.Join(dir, "restored")
		code, _, stderr := runCLI(t, "restore", filepath.Join(out, "alpha"), "-o", restored)
		if code != 1 || !strings.Contains(stderr, "no weight file") {
			t.Errorf("weights %v: exit %d, want 1 saying the manifest lists no weight file: %q", w, code, stderr)
		}
		if _, err := os.Stat(restored); err == nil {
			t.Errorf("weights %v: %s was created", w, restored)
			os.RemoveAll(restored)
		}
	}
}

// TestBatchFIFOWeight checks that batch refuses a FIFO named like a weight
// file in a checkout, at once, rather than skipping it or blocking.
func TestBatchFIFOWeight(t *testing.T) {
	dir := t.TempDir()
	ck := tinyCheckout(t, dir, "m", "model-00001-of-00002.safetensors")
	if err := syscall.Mkfifo(filepath.Join(ck, "model-00002-of-00002.safetensors"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, stderr := runCLITimeout(t, 20*time.Second, "batch", filepath.Dir(ck), "-o", filepath.Join(dir, "out"), "--codec", "none")
	if code != 1 || !strings.Contains(stderr, "not a regular file") {
		t.Errorf("exit %d, want 1 naming the FIFO: %q", code, stderr)
	}
}

// TestRateErrorsNameTheirFlags checks that rate control's errors, in the
// library's words, reach the user with the flags that change them.
func TestRateErrorsNameTheirFlags(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "m.safetensors")
	writeOneTensor(t, in, tensor.F32, 8, 32, func(i int) float32 { return 1e6 * float32(i%5-2) })
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bpw", "4"}, "compress them with --codec none, or --exclude them"},
		{[]string{"--bpw", "4", "--layers", "none"}, "(see --layers and --include)"},
	} {
		args := append([]string{"compress", in, "-o", filepath.Join(dir, "m.tpk")}, tc.args...)
		code, _, stderr := runCLI(t, args...)
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, want 1 with %q: %q", tc.args, code, tc.want, stderr)
		}
		onlyInputLeft(t, "compress", dir, "m.safetensors")
	}
}
