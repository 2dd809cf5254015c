// Package atomicfile writes a file under a temporary name in the target
// directory and renames it over the final name only when it is complete, so
// a crash, a signal or a full disk never leaves a partial file under the
// final name.
package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// TempPrefix starts the name of every temporary file this package creates;
// tools that clean up after a killed process look for it.
const TempPrefix = ".tpconvert-tmp-"

// ErrExists is returned by Create when the final path exists and overwrite
// was not allowed.
var ErrExists = errors.New("output exists (use --force to overwrite)")

// File is a temporary file that becomes Path on Commit.
type File struct {
	*os.File
	Path    string // final name
	done    bool
	written int64 // bytes written through Write
	kicked  int64 // bytes handed to the kernel's writeback
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
	f.written += int64(n)
	if f.written-f.kicked >= writebackChunk {
		_ = unix.SyncFileRange(int(f.Fd()), f.kicked, f.written-f.kicked, unix.SYNC_FILE_RANGE_WRITE)
		f.kicked = f.written
	}
	return n, err
}

var (
	liveMu sync.Mutex
	live   = map[string]struct{}{}
)

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
	f, err := os.CreateTemp(dir, TempPrefix+strings.ReplaceAll(base, "*", "_")+"-*")
	if err != nil {
		return nil, err
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
	return &File{File: f, Path: path}, nil
}

// Commit syncs the file, closes it and renames it to its final name.
func (f *File) Commit() error {
	if f.done {
		return errors.New("atomicfile: already committed or aborted")
	}
	f.done = true
	tmp := f.Name()
	defer forget(tmp)
	if err := f.Sync(); err != nil {
		f.File.Close()
		os.Remove(tmp)
		return fmt.Errorf("%s: %w", f.Path, err)
	}
	if err := f.File.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("%s: %w", f.Path, err)
	}
	if err := os.Rename(tmp, f.Path); err != nil {
		os.Remove(tmp)
		return err
	}
	syncDir(filepath.Dir(f.Path))
	return nil
}

// Abort closes and removes the temporary file. It is safe to call after
// Commit (it then does nothing), so `defer f.Abort()` is the usual pattern.
func (f *File) Abort() {
	if f == nil || f.done {
		return
	}
	f.done = true
	f.File.Close()
	os.Remove(f.Name())
	forget(f.Name())
}

func forget(name string) {
	liveMu.Lock()
	delete(live, name)
	liveMu.Unlock()
}

// RemoveAll deletes every temporary file still open in this process. A
// signal handler calls it before exiting.
func RemoveAll() {
	liveMu.Lock()
	defer liveMu.Unlock()
	for name := range live {
		os.Remove(name)
		delete(live, name)
	}
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
