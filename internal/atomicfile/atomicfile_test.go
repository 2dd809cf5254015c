package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/tpconvert/tpconvert/internal/testfs"
	"github.com/tpconvert/tpconvert/internal/tmpfs"
)

// temps lists the temporary files in dir.
func temps(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, n := range testfs.ListDir(t, dir) {
		if strings.HasPrefix(n, TempPrefix) {
			out = append(out, n)
		}
	}
	return out
}

func liveCount() int {
	liveMu.Lock()
	defer liveMu.Unlock()
	return len(live)
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// create returns a new directory, the path of out.tpk in it, and a File
// created at that path without overwrite.
func create(t *testing.T) (dir, path string, f *File) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, "out.tpk")
	f, err := Create(path, false)
	if err != nil {
		t.Fatal(err)
	}
	return dir, path, f
}

func TestCommit(t *testing.T) {
	dir, path, f := create(t)
	defer f.Abort()
	if _, err := f.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("final name exists before Commit: %v", err)
	}
	if ts := temps(t, dir); len(ts) != 1 || !strings.Contains(ts[0], "out.tpk") {
		t.Fatalf("temporary files %v, want one naming out.tpk", ts)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, path); got != "hello" {
		t.Errorf("content %q", got)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", st.Mode().Perm())
	}
	if ts := temps(t, dir); len(ts) != 0 {
		t.Errorf("temporary files left: %v", ts)
	}
	if err := f.Commit(); err == nil {
		t.Error("second Commit succeeded")
	}
	f.Abort() // after Commit: must not remove the committed file
	if got := readFile(t, path); got != "hello" {
		t.Errorf("Abort after Commit changed the file: %q", got)
	}
}

// previous returns a new directory and the path in it of a file name
// that holds "previous".
func previous(t *testing.T, name string) (dir, path string) {
	t.Helper()
	dir = t.TempDir()
	path = filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("previous"), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, path
}

func TestExisting(t *testing.T) {
	dir, path := previous(t, "out.gguf")
	if _, err := Create(path, false); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), path) {
		t.Fatalf("Create over an existing file: err = %v, want ErrExists naming the path", err)
	}
	if ts := temps(t, dir); len(ts) != 0 {
		t.Errorf("refused Create left %v", ts)
	}
	f, err := Create(path, true)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("new"))
	if got := readFile(t, path); got != "previous" {
		t.Fatalf("previous file changed before Commit: %q", got)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, path); got != "new" {
		t.Errorf("content %q after overwrite", got)
	}
}

func TestAbortKeepsPrevious(t *testing.T) {
	dir, path := previous(t, "m.safetensors")
	n := liveCount()
	f, err := Create(path, true)
	if err != nil {
		t.Fatal(err)
	}
	if liveCount() != n+1 {
		t.Errorf("live temporaries %d, want %d", liveCount(), n+1)
	}
	f.Write(bytes.Repeat([]byte("x"), 1<<16))
	f.Abort()
	f.Abort() // twice is fine
	if got := readFile(t, path); got != "previous" {
		t.Errorf("previous output became %.20q", got)
	}
	if ts := temps(t, dir); len(ts) != 0 {
		t.Errorf("temporary files left: %v", ts)
	}
	if liveCount() != n {
		t.Errorf("live temporaries %d after Abort, want %d", liveCount(), n)
	}
	if err := f.Commit(); err == nil {
		t.Error("Commit after Abort succeeded")
	}
	if got := readFile(t, path); got != "previous" {
		t.Errorf("Commit after Abort replaced the output: %.20q", got)
	}
}

func TestRemoveAll(t *testing.T) {
	dir := t.TempDir()
	var fs []*File
	for _, name := range []string{"a.tpk", "b*.tpk"} {
		f, err := Create(filepath.Join(dir, name), false)
		if err != nil {
			t.Fatal(err)
		}
		f.Write([]byte(name))
		fs = append(fs, f)
	}
	if ts := temps(t, dir); len(ts) != 2 {
		t.Fatalf("temporary files %v, want 2", ts)
	}
	RemoveAll()
	defer Resume()
	if ts := temps(t, dir); len(ts) != 0 {
		t.Errorf("RemoveAll left %v", ts)
	}
	if liveCount() != 0 {
		t.Errorf("%d live temporaries after RemoveAll", liveCount())
	}
	for _, f := range fs {
		if err := f.Commit(); err == nil {
			t.Errorf("Commit of %s after RemoveAll succeeded", f.Path)
		}
		if _, err := os.Lstat(f.Path); err == nil {
			t.Errorf("%s exists", f.Path)
		}
	}
}

func TestCreateInMissingDirectory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "no", "such", "dir", "out.tpk")
	if _, err := Create(path, false); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("err = %v, want ErrNotExist", err)
	}
}

// TestWritebackCounters checks that Write hands every full chunk to the
// kernel's writeback and counts bytes as written.
func TestWritebackCounters(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 40 MiB; skipped with -short")
	}
	f, err := Create(filepath.Join(t.TempDir(), "big"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Abort()
	chunk := make([]byte, 1<<20)
	for i := 0; i < 40; i++ {
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
		if f.written != int64(i+1)<<20 {
			t.Fatalf("written %d after %d MiB", f.written, i+1)
		}
		if f.written-f.kicked >= writebackChunk {
			t.Fatalf("%d bytes written since the last writeback (chunk %d)", f.written-f.kicked, writebackChunk)
		}
	}
	if f.kicked != writebackChunk {
		t.Errorf("writeback started up to %d, want %d", f.kicked, writebackChunk)
	}
}

func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	return tmpfs.Mount(t, size, "; the disk-full path is also covered with an injected writer in package convert")
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	_, avail := tmpfs.Stat(t, dir)
	return avail
}

// TestDiskFull fills a 1 MiB tmpfs through a File: the write fails with
// ENOSPC, and Abort leaves the previous output as it was and gives the
// space back.
func TestDiskFull(t *testing.T) {
	dir := mountTmpfs(t, 1<<20)
	path := filepath.Join(dir, "out.tpk")
	prev := bytes.Repeat([]byte("previous output\n"), 4096) // 64 KiB
	if err := os.WriteFile(path, prev, 0o644); err != nil {
		t.Fatal(err)
	}
	free := freeBytes(t, dir)
	f, err := Create(path, true)
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{0xAB}, 64<<10)
	var total int64
	for total < 4<<20 {
		var n int
		n, err = f.Write(chunk)
		total += int64(n)
		if err != nil {
			break
		}
	}
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("after %d bytes: err = %v, want ENOSPC", total, err)
	}
	if !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), TempPrefix) {
		t.Errorf("error %q should name %s, not the temporary file", err, path)
	}
	if total > 1<<20 {
		t.Errorf("wrote %d bytes to a 1 MiB file system", total)
	}
	f.Abort()
	if got, _ := os.ReadFile(path); !bytes.Equal(got, prev) {
		t.Errorf("previous output changed (%d bytes, want %d)", len(got), len(prev))
	}
	if ts := temps(t, dir); len(ts) != 0 {
		t.Errorf("temporary files left: %v", ts)
	}
	if now := freeBytes(t, dir); now < free {
		t.Errorf("%d bytes free after Abort, %d before", now, free)
	}

	// A file that fits is committed in place of the previous one.
	f, err = Create(path, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(chunk); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, chunk) {
		t.Error("committed file differs")
	}
}

// TestCommitDoesNotReplace checks that of two writers to the same new path
// without overwrite, the second's Commit fails with ErrExists and leaves
// the first's file (a check before a plain rename let both succeed).
func TestCommitDoesNotReplace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.tpk")
	a, err := Create(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Abort()
	b, err := Create(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Abort()
	a.Write([]byte("first"))
	b.Write([]byte("second"))
	if err := a.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); !errors.Is(err, ErrExists) {
		t.Errorf("second Commit: %v, want ErrExists", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "first" {
		t.Errorf("file holds %q, want the first writer's", got)
	}
	if ts := temps(t, filepath.Dir(path)); len(ts) != 0 {
		t.Errorf("temporary files left: %v", ts)
	}
	// With overwrite, a commit replaces the file.
	c, err := Create(path, true)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("third"))
	if err := c.Commit(); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != "third" {
		t.Errorf("file holds %q after an overwriting commit", got)
	}
}

// TestReadOnlyNamesOutput checks that creating an output on a read-only
// file system fails with an error naming the output, not a temporary name.
func TestReadOnlyNamesOutput(t *testing.T) {
	dir := tmpfs.Mount(t, 1<<20, "")
	if err := syscall.Mount("", dir, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Skipf("cannot remount %s read-only: %v", dir, err)
	}
	path := filepath.Join(dir, "out.tpk")
	_, err := Create(path, false)
	if !errors.Is(err, syscall.EROFS) || !strings.Contains(err.Error(), path) || strings.Contains(err.Error(), TempPrefix) {
		t.Errorf("Create on a read-only file system: %v; want EROFS naming %s", err, path)
	}
}

// TestInterruptStopsCommit checks that after RemoveAll no Commit renames.
func TestInterruptStopsCommit(t *testing.T) {
	dir, _, f := create(t)
	tmpDir, err := MkdirTemp(dir, TempPrefix+"d-*")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(tmpDir, "x"), []byte("x"), 0o644)
	undo, err := MkdirAll(filepath.Join(dir, "a", "b"))
	if err != nil {
		t.Fatal(err)
	}
	_ = undo
	RemoveAll()
	defer Resume()
	if err := f.Commit(); !errors.Is(err, ErrInterrupted) {
		t.Errorf("Commit after RemoveAll: %v, want ErrInterrupted", err)
	}
	if es, _ := os.ReadDir(dir); len(es) != 0 {
		t.Errorf("left behind: %v", es)
	}
}

// TestStaleTempsRemoved checks that Create removes the temporary file of
// the same output left by a killed process, and nothing else: not that
// of a live process, not that of another output.
func TestStaleTempsRemoved(t *testing.T) {
	dir := t.TempDir()
	// A process that has exited: its PID is free (until reused, when the
	// file is merely kept).
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip("cannot run true:", err)
	}
	dead := cmd.Process.Pid
	stale := filepath.Join(dir, fmt.Sprintf("%s%d-out.tpk-123456", TempPrefix, dead))
	live := filepath.Join(dir, fmt.Sprintf("%s%d-out.tpk-654321", TempPrefix, os.Getpid()))
	other := filepath.Join(dir, fmt.Sprintf("%s%d-out.tpk-x-1", TempPrefix, dead))
	for _, p := range []string{stale, live, other} {
		if err := os.WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := Create(filepath.Join(dir, "out.tpk"), false)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Abort()
	if _, err := os.Stat(stale); err == nil {
		t.Error("the killed process's temporary file is still there")
	}
	for _, p := range []string{live, other} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was removed", p)
		}
	}
}
