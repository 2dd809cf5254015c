package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/fixtures/gen"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/tensor"
)

// slowCodec is f16 that calls onEncode, if set, as it starts coding each
// tensor (n counts from 1), so a test can act when the nth tensor starts.
type slowCodec struct{ codec.Codec }

var (
	encodes  atomic.Int64
	onEncode func(n int64)
)

func (s slowCodec) ID() uint16   { return 0xfff0 }
func (s slowCodec) Name() string { return "slow_test" }
func (s slowCodec) Encode(w io.Writer, t tensor.Info, x []float32) error {
	if f := onEncode; f != nil {
		f(encodes.Add(1))
	}
	return s.Codec.Encode(w, t, x)
}

func init() {
	codec.Register(0xfff0, "slow_test", "f16 with a hook per tensor (tests only)", func(o codec.Options) (codec.Codec, error) {
		c, err := codec.New("f16", o)
		return slowCodec{c}, err
	})
}

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func fixture(t *testing.T) (string, string) {
	t.Helper()
	dir := t.TempDir()
	in := filepath.Join(dir, "model.safetensors")
	if err := gen.WriteSafetensors(in, gen.Presets["small"], tensor.BF16, 1); err != nil {
		t.Fatal(err)
	}
	return dir, in
}

func TestExitCodes(t *testing.T) {
	dir, in := fixture(t)
	bad := filepath.Join(dir, "bad.safetensors")
	os.WriteFile(bad, []byte("\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1"), 0o644)
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{nil, 2, "no input"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{in, "--codec", "zstd"}, 2, "unknown codec"},
		{[]string{in, "--layers", "some"}, 2, "--layers"},
		{[]string{in, "--include", "("}, 2, "--include"},
		{[]string{in, "--max-memory", "lots"}, 2, "invalid size"},
		{[]string{"compress"}, 2, "one INPUT"},
		{[]string{"restore", in, "--dtype", "q4"}, 2, "--dtype"},
		{[]string{bad, "-o", filepath.Join(dir, "bad.tpk")}, 1, "bad.safetensors"},
		{[]string{"restore", in}, 1, "not a .tpk"},
		{[]string{"inspect", filepath.Join(dir, "missing.gguf")}, 1, "no such file"},
		{[]string{"verify", in}, 1, "not a .tpk"},
		{[]string{"help"}, 0, ""},
		{[]string{"codecs"}, 0, ""},
	}
	for _, c := range cases {
		code, _, stderr := runCLI(t, c.args...)
		if code != c.code || !strings.Contains(stderr, c.msg) {
			t.Errorf("tpconvert %q: exit %d, stderr %q; want exit %d mentioning %q", c.args, code, stderr, c.code, c.msg)
		}
		if code == 1 && strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("tpconvert %q: error is not one line: %q", c.args, stderr)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "bad.tpk")); err == nil {
		t.Error("output left behind for a bad input")
	}
}

func TestCompressRestoreInspectVerify(t *testing.T) {
	dir, in := fixture(t)
	code, out, stderr := runCLI(t, in, "--codec", "int8", "--json")
	if code != 0 {
		t.Fatalf("compress: %d %s", code, stderr)
	}
	var rep struct {
		Output string
		Totals struct {
			Compressed int
			BPWAll     float64 `json:"bpw_all"`
		}
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json output: %v\n%s", err, out)
	}
	if rep.Output != filepath.Join(dir, "model.tpk") || rep.Totals.Compressed != 14 {
		t.Errorf("report %+v", rep)
	}
	tpkPath := rep.Output
	if code, _, stderr := runCLI(t, in, "--codec", "f16"); code != 1 || !strings.Contains(stderr, "--force") {
		t.Errorf("second compress without --force: %d %q", code, stderr)
	}
	if code, out, _ := runCLI(t, "inspect", tpkPath); code != 0 || !strings.Contains(out, "bits/weight") || !strings.Contains(out, "vs FP16") {
		t.Errorf("inspect: %d %q", code, out)
	}
	if code, out, _ := runCLI(t, "verify", tpkPath); code != 0 || !strings.Contains(out, "OK") {
		t.Errorf("verify: %d %q", code, out)
	}
	if code, _, stderr := runCLI(t, "restore", tpkPath); code != 0 {
		t.Errorf("restore: %d %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "model.restored.safetensors")); err != nil {
		t.Error(err)
	}
	// Corrupt one payload byte: verify and restore name the tensor.
	b, _ := os.ReadFile(tpkPath)
	b[100] ^= 0x10
	os.WriteFile(tpkPath, b, 0o644)
	code, _, stderr = runCLI(t, "verify", tpkPath)
	if code != 1 || !strings.Contains(stderr, "checksum") || !strings.Contains(stderr, "tensor ") {
		t.Errorf("verify of a damaged file: %d %q", code, stderr)
	}
	code, _, stderr = runCLI(t, "restore", tpkPath, "-o", filepath.Join(dir, "x.safetensors"))
	if code != 1 || !strings.Contains(stderr, "checksum") {
		t.Errorf("restore of a damaged file: %d %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "x.safetensors")); err == nil {
		t.Error("restore of a damaged file left an output")
	}
}

// TestInterruptLeavesNoOutput sends SIGINT as the third tensor starts;
// that tensor waits for the command to see the signal (its context
// cancelled), so the conversion is interrupted mid-way every time.
func TestInterruptLeavesNoOutput(t *testing.T) {
	dir, in := fixture(t)
	out := filepath.Join(dir, "m.tpk")
	var runCtx context.Context
	runHook = func(ctx context.Context) { runCtx = ctx }
	encodes.Store(0)
	onEncode = func(n int64) {
		if n != 3 {
			return
		}
		syscall.Kill(os.Getpid(), syscall.SIGINT)
		select {
		case <-runCtx.Done():
		case <-time.After(10 * time.Second): // the command ignored the signal
		}
	}
	defer func() { runHook, onEncode = nil, nil }()
	start := time.Now()
	code, _, stderr := runCLI(t, in, "--codec", "slow_test", "--workers", "1", "-o", out)
	if code != 130 {
		t.Fatalf("exit %d, want 130 (%s)", code, stderr)
	}
	if n := encodes.Load(); n != 3 {
		t.Errorf("%d tensors started, want 3: the command did not stop at the signal", n)
	}
	if d := time.Since(start); d > 1500*time.Millisecond {
		t.Errorf("took %v to stop", d)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("output exists after SIGINT")
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), atomicfile.TempPrefix) {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func TestParseSize(t *testing.T) {
	for s, want := range map[string]int64{"512MiB": 512 << 20, "4GiB": 4 << 30, "5GB": 5e9, "1.5G": 3 << 29, "1048576": 1 << 20, "2k": 2048} {
		if got, err := parseSize(s); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", s, got, err, want)
		}
	}
	for _, s := range []string{"", "-1MB", "lots", "1e30GB"} {
		if _, err := parseSize(s); err == nil {
			t.Errorf("parseSize(%q) succeeded", s)
		}
	}
}

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
