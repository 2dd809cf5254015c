// Package inputfile opens input files the way a converter that is pointed
// at downloaded files must: only regular files, without ever blocking in
// open(2) on a FIFO or a device, and lists a directory's files by name
// suffix without treating any part of a user's path as a glob pattern.
package inputfile

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Open opens path read-only. It refuses anything but a regular file
// (after following symbolic links): a FIFO, a socket or a device is
// refused without blocking, since the file is opened with O_NONBLOCK,
// which has no effect on a regular file's reads.
func Open(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: not a regular file (pipes, sockets and devices are not read)", path)
	}
	// Back to blocking mode so that os.File uses plain reads.
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "fcntl", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// List returns, in name order, the paths dir/name of the entries of dir
// whose name ends in suffix. Each must be a regular file (after following
// symbolic links): a FIFO, device or directory with a matching name is an
// error rather than silently skipped, since it would stand for weights.
// dir is used literally: characters such as '*', '?' and '[' in it have no
// special meaning.
func List(dir, suffix string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), suffix) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if _, err := Regular(p); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	slices.Sort(out)
	return out, nil
}

// Regular returns path's file information, or an error unless path is a regular file (after following
// symbolic links): a FIFO, device or directory named like an input would
// block or be skipped silently, so it is refused by name.
func Regular(path string) (os.FileInfo, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (pipes, sockets, devices and directories are not read)", path)
	}
	return st, nil
}
