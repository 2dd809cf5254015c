package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tpconvert/tpconvert/internal/atomicfile"
)

// sigBigElems is the size of the large tensor of TestSignalsStopEveryCommand:
// 48M F32 elements, 192 MiB.
const sigBigElems = 8192 * 6144

// writeBigSafetensors writes a safetensors file with a small norm and one
// 192 MiB F32 projection. The data section is a hole (zeros), so the file
// costs no disk space and no time to write.
func writeBigSafetensors(t *testing.T, path string) {
	t.Helper()
	hdr := fmt.Sprintf(`{"model.norm.weight":{"dtype":"F32","shape":[64],"data_offsets":[0,256]},`+
		`"model.layers.0.mlp.up_proj.weight":{"dtype":"F32","shape":[8192,6144],"data_offsets":[256,%d]}}`, 256+4*sigBigElems)
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	b = append(b, hdr...)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, int64(len(b))+256+4*sigBigElems); err != nil {
		t.Fatal(err)
	}
}

// cpuTicks returns the user+system CPU time of process pid in clock ticks.
func cpuTicks(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of the whole line.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	u, _ := strconv.Atoi(f[11])
	s, _ := strconv.Atoi(f[12])
	return u + s
}

// tempsUnder lists the temporary files and directories under dir.
func tempsUnder(dir string) []string {
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), atomicfile.TempPrefix) {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// bigTemp reports whether a temporary file under dir has at least n bytes.
func bigTemp(dir string, n int64) bool {
	for _, p := range tempsUnder(dir) {
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Size() >= n {
			return true
		}
	}
	return false
}

// listing returns the names of every entry under dir.
func listing(dir string) map[string]bool {
	m := map[string]bool{}
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil {
			m[p] = true
		}
		return nil
	})
	return m
}

// TestSignalsStopEveryCommand runs compress, restore, verify, batch and
// batch restore on a 192 MiB tensor with the built binary and sends
// SIGINT or SIGTERM at several points of each job: as soon as its first
// temporary output appears, in the middle of writing the large tensor,
// or once it has spent CPU time on it (verify and a lossy encode write
// nothing meanwhile). The points are observed, not timed. Each command
// must exit with status 130 within 1 s of the signal and leave nothing
// behind: no output and no temporary file or directory. (The machine
// running the tests may be loaded; 1 s is the limit the documentation
// gives.)
func TestSignalsStopEveryCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and writes several hundred MiB; skipped with -short")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "big.safetensors")
	writeBigSafetensors(t, src)
	tpkPath := filepath.Join(dir, "big.tpk")
	runBin(t, bin, "compress", src, "-o", tpkPath, "--codec", "none")
	models := filepath.Join(dir, "models", "m1")
	if err := os.MkdirAll(models, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(src, filepath.Join(models, "model.safetensors")); err != nil {
		t.Fatal(err)
	}
	batchOut := filepath.Join(dir, "batch-done")
	runBin(t, bin, "batch", filepath.Dir(models), "-o", batchOut, "--codec", "none")

	work := filepath.Join(dir, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	appears := func(*exec.Cmd) bool { return len(tempsUnder(work)) > 0 }
	halfWritten := func(*exec.Cmd) bool { return bigTemp(work, 48<<20) }
	busy := func(c *exec.Cmd) bool { return cpuTicks(c.Process.Pid) >= 20 } // 0.2 s of CPU
	// Verify writes nothing and hashes 192 MiB in well under 0.1 s: it
	// is signalled once it has used one clock tick (10 ms) of CPU, which
	// is after the index is read.
	started := func(c *exec.Cmd) bool { return cpuTicks(c.Process.Pid) >= 1 }
	cases := []struct {
		name    string
		args    []string
		trigger func(*exec.Cmd) bool
	}{
		{"compress/first temp", []string{"compress", src, "-o", filepath.Join(work, "o.tpk"), "--codec", "none"}, appears},
		{"compress/mid-write", []string{"compress", src, "-o", filepath.Join(work, "o.tpk"), "--codec", "none"}, halfWritten},
		{"compress int8/mid-encode", []string{"compress", src, "-o", filepath.Join(work, "o.tpk"), "--codec", "int8", "--layers", "all"}, busy},
		{"restore/first temp", []string{"restore", tpkPath, "-o", filepath.Join(work, "o.safetensors")}, appears},
		{"restore/mid-write", []string{"restore", tpkPath, "-o", filepath.Join(work, "o.safetensors")}, halfWritten},
		{"verify/mid-record", []string{"verify", tpkPath}, started},
		{"batch/first temp", []string{"batch", filepath.Dir(models), "-o", filepath.Join(work, "out"), "--codec", "none"}, appears},
		{"batch/mid-write", []string{"batch", filepath.Dir(models), "-o", filepath.Join(work, "out"), "--codec", "none"}, halfWritten},
		{"batch restore/first temp", []string{"restore", batchOut, "-o", filepath.Join(work, "restored")}, appears},
		{"batch restore/mid-write", []string{"restore", batchOut, "-o", filepath.Join(work, "restored")}, halfWritten},
	}
	for k, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			sig := []syscall.Signal{syscall.SIGINT, syscall.SIGTERM}[k%2]
			before := listing(work)
			cmd := exec.Command(bin, c.args...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			exited := false
			waitFor(t, c.name, 60*time.Second, func() bool {
				select {
				case <-done:
					exited = true
					return true
				default:
				}
				return c.trigger(cmd)
			})
			if exited {
				t.Fatalf("finished before the signal point (exit %d): %s", cmd.ProcessState.ExitCode(), stderr.String())
			}
			sent := time.Now()
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				cmd.Process.Kill()
				<-done
				t.Fatalf("%v: still running 10 s later", sig)
			}
			took := time.Since(sent)
			if code := cmd.ProcessState.ExitCode(); code != 130 {
				t.Errorf("%v: exit %d, want 130: %s", sig, code, stderr.String())
			}
			if took > time.Second {
				t.Errorf("%v: took %v to stop (limit 1 s)", sig, took)
			}
			t.Logf("%v: stopped in %v", sig, took.Round(time.Millisecond))
			for p := range listing(work) {
				if !before[p] {
					t.Errorf("%v: left %s behind", sig, p)
					os.RemoveAll(p)
				}
			}
		})
	}
}
