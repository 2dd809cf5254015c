// Package mmap maps files read-only into memory and lets callers hand pages
// back to the kernel once they are done with them, so that streaming over a
// multi-GB file keeps resident memory bounded.
package mmap

import (
	"fmt"
	"os"
	"syscall"

	"github.com/tpconvert/tpconvert/internal/inputfile"
)

// Map is a read-only memory map of a whole file.
type Map struct {
	Data []byte
	f    *os.File
}

// Open maps the file at path read-only. The file is opened O_RDONLY: the
// input is never opened for writing.
func Open(path string) (*Map, error) {
	f, err := inputfile.Open(path) // regular files only, never blocks on a FIFO
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	m := &Map{f: f}
	size := st.Size()
	if size > 0 {
		if int64(int(size)) != size {
			f.Close()
			return nil, fmt.Errorf("%s: file too large to map", path)
		}
		data, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("%s: mmap: %w", path, err)
		}
		m.Data = data
	}
	return m, nil
}

// Size returns the mapped length.
func (m *Map) Size() int64 { return int64(len(m.Data)) }

// File returns the underlying file (for ReadAt).
func (m *Map) File() *os.File { return m.f }

// WillNeed advises the kernel that [off, off+n) will be read soon.
func (m *Map) WillNeed(off, n int64) { m.advise(off, n, syscall.MADV_WILLNEED) }

// Release drops the pages of [off, off+n) from this process's resident
// memory (MADV_DONTNEED); the data stays readable and is paged in again on
// access. Offsets are widened to page boundaries.
func (m *Map) Release(off, n int64) { m.advise(off, n, syscall.MADV_DONTNEED) }

func (m *Map) advise(off, n int64, advice int) {
	if m == nil || len(m.Data) == 0 || n <= 0 || off < 0 || off >= int64(len(m.Data)) {
		return
	}
	page := int64(os.Getpagesize())
	start := off &^ (page - 1)
	end := off + n
	if end > int64(len(m.Data)) {
		end = int64(len(m.Data))
	}
	_ = syscall.Madvise(m.Data[start:end], advice)
}

// Close unmaps the file and closes it.
func (m *Map) Close() error {
	if m == nil {
		return nil
	}
	var err error
	if m.Data != nil {
		err = syscall.Munmap(m.Data)
		m.Data = nil
	}
	if m.f != nil {
		if cerr := m.f.Close(); err == nil {
			err = cerr
		}
		m.f = nil
	}
	return err
}
