// Package atomicdir puts outputs that are more than one file into place
// all at once: a model directory assembled by batch, a restored checkout
// directory, the shards and index of a sharded safetensors checkout. Each
// is first written completely under temporary names (internal/atomicfile),
// then Swap renames every piece into place, or none.
package atomicdir

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/tpconvert/tpconvert/internal/atomicfile"
)

// Move is one rename of Swap: the complete file or directory From becomes
// To.
type Move struct {
	From, To string
	// Aside is the os.MkdirTemp pattern of the name, in To's directory,
	// that an existing To is renamed to while it is replaced (so that a
	// run killed in between leaves it under a name its cleanup
	// recognises). Empty: the name of a temporary file of this process
	// for To, which atomicfile removes when the process no longer runs.
	Aside string
}

// Swap renames every From to its To, all or none, under atomicfile.Guard
// (an interrupt comes before the first rename or after the last). An
// existing To is an error wrapping atomicfile.ErrExists unless overwrite
// is set; then it is renamed aside first and removed, with its contents,
// once every rename has succeeded (a file never replaces a directory). When one rename fails, those done so
// far are undone (every From is back, every previous To in its place) and
// the error returned. The parent directories are synced.
func Swap(moves []Move, overwrite bool) error {
	var asides []string
	err := atomicfile.Guard(func() error {
		var err error
		asides, err = swap(moves, overwrite)
		return err
	})
	if errors.Is(err, atomicfile.ErrInterrupted) && len(moves) > 0 {
		return fmt.Errorf("%s: %w", moves[0].To, err)
	}
	if err != nil {
		return err
	}
	synced := map[string]bool{}
	for _, m := range moves {
		if d := filepath.Dir(m.To); !synced[d] {
			synced[d] = true
			SyncDir(d)
		}
	}
	for _, a := range asides {
		if a != "" {
			os.RemoveAll(a)
		}
	}
	return nil
}

func swap(moves []Move, overwrite bool) ([]string, error) {
	asides := make([]string, len(moves))
	undo := func(n int) {
		for i := n - 1; i >= 0; i-- {
			os.Rename(moves[i].To, moves[i].From)
			if asides[i] != "" {
				os.Rename(asides[i], moves[i].To)
			}
		}
	}
	for i, m := range moves {
		if st, err := os.Lstat(m.To); err == nil {
			if !overwrite {
				undo(i)
				return nil, fmt.Errorf("%s: %w", m.To, atomicfile.ErrExists)
			}
			from, err := os.Lstat(m.From)
			if err != nil {
				undo(i)
				return nil, err
			}
			if st.IsDir() && !from.IsDir() {
				// A file never replaces a directory (rename(2) refuses
				// too): the directory's contents would be lost.
				undo(i)
				return nil, &fs.PathError{Op: "rename", Path: m.To, Err: syscall.EISDIR}
			}
			pattern := m.Aside
			if pattern == "" {
				pattern = atomicfile.TempPattern(m.To)
			}
			a, err := freshName(filepath.Dir(m.To), pattern)
			if err == nil {
				// A file replaced by a file keeps its name until the
				// rename replaces it; anything else moves aside.
				if !st.Mode().IsRegular() || from.IsDir() || os.Link(m.To, a) != nil {
					err = os.Rename(m.To, a)
				}
			}
			if err != nil {
				undo(i)
				return nil, err
			}
			asides[i] = a
		}
		if err := atomicfile.Rename(m.From, m.To, overwrite); err != nil {
			if a := asides[i]; a != "" {
				if _, err := os.Lstat(m.To); err == nil {
					os.Remove(a) // a second link to the file still in place
				} else {
					os.Rename(a, m.To)
				}
				asides[i] = ""
			}
			undo(i)
			if errors.Is(err, atomicfile.ErrExists) {
				err = fmt.Errorf("%s: %w", m.To, err)
			}
			return nil, err
		}
	}
	return asides, nil
}

// freshName returns an unused path in dir whose name follows pattern (as
// os.MkdirTemp's), to rename a file or directory to.
func freshName(dir, pattern string) (string, error) {
	p, err := os.MkdirTemp(dir, pattern)
	if err != nil {
		return "", err
	}
	return p, os.Remove(p)
}

// Temp creates a directory in parent, named by pattern as os.MkdirTemp's,
// that atomicfile.RemoveAll deletes with its contents while it has not
// been swapped into place.
func Temp(parent, pattern string) (string, error) {
	return atomicfile.MkdirTemp(parent, pattern)
}

// SwapDir makes the complete directory tmp (made by Temp) the directory
// final: it syncs tmp, makes it an ordinary directory (0755) and swaps it
// into place as Swap does, with aside as Move.Aside.
func SwapDir(tmp, final, aside string, overwrite bool) error {
	// MkdirTemp made it private; outputs are ordinary directories.
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	SyncDir(tmp)
	return Swap([]Move{{From: tmp, To: final, Aside: aside}}, overwrite)
}

// SyncDir syncs a directory's entries to disk, ignoring errors (a file
// system that cannot sync a directory loses nothing it could keep).
func SyncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
