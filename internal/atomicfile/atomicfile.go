// Package atomicfile writes a file under a temporary name in the target
// directory and renames it over the final name only when it is complete, so
// a crash, a signal or a full disk never leaves a partial file under the
// final name.
package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// TempPrefix starts the name of every temporary file this package creates;
// tools that clean up after a killed process look for it.
const TempPrefix = ".tpconvert-tmp-"

// ErrExists is returned by Create when the final path exists and overwrite
// was not allowed.
var ErrExists = errors.New("output exists")

// File is a temporary file that becomes Path on Commit.
type File struct {
	*os.File
	Path      string // final name
	overwrite bool
	done      bool
	prepared  bool  // synced and closed by Prepare
	written   int64 // bytes written through Write
	kicked    int64 // bytes handed to the kernel's writeback
}

// writebackChunk is how many written bytes accumulate before File asks the
// kernel to start writing them back, so the final fsync has little left to
// do and dirty pages do not pile up in memory.
const writebackChunk = 32 << 20

// Write writes p and starts asynchronous writeback of every full chunk
// written so far (sync_file_range(2) with SYNC_FILE_RANGE_WRITE: it does not
// wait). The standard library has no portable call for this.
func (f *File) Write(p []byte) (int, error) {
	n, err := f.File.Write(p)
	if err != nil {
		err = f.named(err)
	}
	f.written += int64(n)
	if f.written-f.kicked >= writebackChunk {
		_ = unix.SyncFileRange(int(f.Fd()), f.kicked, f.written-f.kicked, unix.SYNC_FILE_RANGE_WRITE)
		f.kicked = f.written
	}
	return n, err
}

var (
	liveMu      sync.Mutex
	live        = map[string]struct{}{}
	liveDirs    = map[string]struct{}{} // temporary directories, removed with their contents
	createdDirs []string                // directories made by MkdirAll, removed if empty
	interrupted bool                    // set by RemoveAll: no Commit may rename any more
)

// ErrInterrupted is returned by Commit after RemoveAll was called.
var ErrInterrupted = errors.New("atomicfile: interrupted")

// Create opens a temporary file in path's directory. Unless overwrite is
// set, it refuses when path already exists.
func Create(path string, overwrite bool) (*File, error) {
	if !overwrite {
		if _, err := os.Lstat(path); err == nil {
			return nil, fmt.Errorf("%s: %w", path, ErrExists)
		}
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	removeStale(dir, tempBase(base))
	f, err := os.CreateTemp(dir, TempPattern(path))
	if err != nil {
		return nil, withPath(err, path)
	}
	// CreateTemp makes the file private (0600); outputs are ordinary files.
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	liveMu.Lock()
	live[f.Name()] = struct{}{}
	liveMu.Unlock()
	return &File{File: f, Path: path, overwrite: overwrite}, nil
}

// tempBase is a file's base name as it appears in its temporary names.
func tempBase(base string) string { return strings.ReplaceAll(base, "*", "_") } // CreateTemp's wildcard

// TempPattern is the os.CreateTemp pattern of this process's temporary
// names for path: removeStale deletes them once the process no longer
// runs.
func TempPattern(path string) string {
	return fmt.Sprintf("%s%d-%s-*", TempPrefix, os.Getpid(), tempBase(filepath.Base(path)))
}

// removeStale deletes the temporary files of base in dir left by
// processes that no longer run (killed with SIGKILL, or on a crash).
// Temporary names are TempPrefix, the writer's process ID, "-", base, "-"
// and CreateTemp's random digits; a name whose process is alive, or that
// does not parse, is left alone.
func removeStale(dir, base string) {
	es, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range es {
		rest, ok := strings.CutPrefix(e.Name(), TempPrefix)
		if !ok || e.IsDir() {
			continue
		}
		pidStr, rest, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 {
			continue
		}
		rnd, ok := strings.CutPrefix(rest, base+"-")
		if !ok || rnd == "" || strings.Trim(rnd, "0123456789") != "" {
			continue
		}
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// withPath replaces the temporary name in a *fs.PathError by the final
// path the user asked for ("out.tpk: write: no space left on device").
func withPath(err error, path string) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return &fs.PathError{Op: pe.Op, Path: path, Err: pe.Err}
	}
	return fmt.Errorf("%s: %w", path, err)
}

func (f *File) named(err error) error { return withPath(err, f.Path) }

// Commit syncs the file, closes it and renames it to its final name.
func (f *File) Commit() error {
	if err := f.Prepare(); err != nil {
		return err
	}
	tmp := f.Name()
	defer f.Detach()
	err := Guard(func() error { return Rename(tmp, f.Path, f.overwrite) })
	if err != nil {
		os.Remove(tmp)
		if errors.Is(err, ErrInterrupted) || errors.Is(err, ErrExists) {
			return fmt.Errorf("%s: %w", f.Path, err)
		}
		return f.named(err)
	}
	syncDir(filepath.Dir(f.Path))
	return nil
}

// Finish runs steps in order (closing the writers layered over f,
// flushing their buffers) and commits f when every step succeeds. It
// returns the first error.
func (f *File) Finish(steps ...func() error) error {
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return f.Commit()
}

// Prepare syncs and closes the file without renaming it, for a caller that
// renames it itself (as atomicdir.Swap does for several files at once). The
// file stays temporary, removed by Abort and RemoveAll, until Detach.
func (f *File) Prepare() error {
	if f.done || f.prepared {
		return errors.New("atomicfile: already committed or aborted")
	}
	if err := f.Sync(); err != nil {
		f.Abort()
		return f.named(err)
	}
	f.prepared = true
	if err := f.File.Close(); err != nil {
		f.Abort()
		return f.named(err)
	}
	return nil
}

// Detach forgets the prepared file once it has been renamed: Abort and
// RemoveAll no longer remove it.
func (f *File) Detach() {
	f.done = true
	forget(f.Name())
}

// Guard runs fn, which renames outputs into place, under the lock RemoveAll
// takes: an interrupt either comes first (fn does not run and Guard returns
// ErrInterrupted) or after fn has finished (the outputs are complete).
func Guard(fn func() error) error {
	liveMu.Lock()
	defer liveMu.Unlock()
	if interrupted {
		return ErrInterrupted
	}
	return fn()
}

// Rename renames oldpath to newpath. Unless overwrite is set it fails with
// ErrExists when newpath exists, in one step (see renameNoReplace).
func Rename(oldpath, newpath string, overwrite bool) error {
	if overwrite {
		return os.Rename(oldpath, newpath)
	}
	err := renameNoReplace(oldpath, newpath)
	if errors.Is(err, fs.ErrExist) {
		return ErrExists
	}
	return err
}

// renameNoReplace renames oldpath to newpath unless newpath exists, in one
// step: renameat2(2) with RENAME_NOREPLACE, or, on file systems without
// it, link(2) (which fails on an existing name) and unlink(2). A check
// before a plain rename would let two writers both succeed, the second
// silently replacing the first.
func renameNoReplace(oldpath, newpath string) error {
	err := unix.Renameat2(unix.AT_FDCWD, oldpath, unix.AT_FDCWD, newpath, unix.RENAME_NOREPLACE)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EEXIST):
		return &fs.PathError{Op: "rename", Path: newpath, Err: fs.ErrExist}
	case !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.ENOTSUP):
		return &fs.PathError{Op: "rename", Path: newpath, Err: err}
	}
	if err := os.Link(oldpath, newpath); err != nil {
		if st, serr := os.Lstat(oldpath); serr == nil && st.IsDir() {
			// Directories cannot be linked: check, then rename.
			if _, serr := os.Lstat(newpath); serr == nil {
				return &fs.PathError{Op: "rename", Path: newpath, Err: fs.ErrExist}
			}
			return os.Rename(oldpath, newpath)
		}
		return err // *LinkError wrapping EEXIST when newpath exists
	}
	return os.Remove(oldpath)
}

// Resume lets Commit succeed again after RemoveAll, for a program that
// carries on after an interrupted command (tests run several in one
// process).
func Resume() {
	liveMu.Lock()
	interrupted = false
	liveMu.Unlock()
}

// MkdirTemp is os.MkdirTemp, and RemoveAll deletes the directory with its
// contents while it still exists under its temporary name.
func MkdirTemp(dir, pattern string) (string, error) {
	p, err := os.MkdirTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	liveMu.Lock()
	liveDirs[p] = struct{}{}
	liveMu.Unlock()
	return p, nil
}

// MkdirAll is os.MkdirAll(path, 0o755) that remembers the directories it
// created. Undo removes them again (innermost first, each only if empty),
// as RemoveAll does; a caller calls Undo when it fails, so that a failed
// or interrupted command leaves no empty output directory behind.
func MkdirAll(path string) (undo func(), err error) {
	var made []string
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil {
			break
		}
		made = append(made, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return func() {}, err
	}
	liveMu.Lock()
	for i := len(made) - 1; i >= 0; i-- { // outermost first: RemoveAll goes backwards
		createdDirs = append(createdDirs, made[i])
	}
	liveMu.Unlock()
	return func() {
		for _, d := range made {
			os.Remove(d) // fails, harmlessly, when not empty
		}
	}, nil
}

// Abort closes and removes the temporary file. It is safe to call after
// Commit (it then does nothing), so `defer f.Abort()` is the usual pattern.
func (f *File) Abort() {
	if f == nil || f.done {
		return
	}
	f.done = true
	if !f.prepared {
		f.File.Close()
	}
	os.Remove(f.Name())
	forget(f.Name())
}

func forget(name string) {
	liveMu.Lock()
	delete(live, name)
	liveMu.Unlock()
}

// RemoveAll deletes every temporary file still open in this process and
// every directory made by MkdirTemp, then the empty directories MkdirAll
// made; Commit fails from then on. A signal handler calls it before
// exiting.
func RemoveAll() {
	liveMu.Lock()
	defer liveMu.Unlock()
	interrupted = true
	for name := range live {
		os.Remove(name)
		delete(live, name)
	}
	for name := range liveDirs {
		os.RemoveAll(name)
		delete(liveDirs, name)
	}
	for i := len(createdDirs) - 1; i >= 0; i-- { // the latest, innermost, first
		os.Remove(createdDirs[i])
	}
	createdDirs = nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
