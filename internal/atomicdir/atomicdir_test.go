package atomicdir

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/internal/testfs"
)

var write = testfs.WriteFile

func read(t *testing.T, p string) string { return string(testfs.ReadFile(t, p)) }

// entries lists dir's names, failing on any temporary one.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	names := testfs.ListDir(t, dir)
	for _, n := range names {
		if strings.HasPrefix(n, atomicfile.TempPrefix) {
			t.Errorf("temporary %s left in %s", n, dir)
		}
	}
	return names
}

func TestSwapDirReplaces(t *testing.T) {
	root := t.TempDir()
	final := filepath.Join(root, "model")
	write(t, filepath.Join(final, "old.txt"), "old")
	tmp, err := Temp(root, atomicfile.TempPrefix+"x-*")
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(tmp, "new.txt"), "new")
	if err := SwapDir(tmp, final, "", false); !errors.Is(err, atomicfile.ErrExists) {
		t.Fatalf("without overwrite: %v, want ErrExists", err)
	}
	if got := read(t, filepath.Join(final, "old.txt")); got != "old" {
		t.Fatalf("the existing directory changed: %q", got)
	}
	if err := SwapDir(tmp, final, "", true); err != nil {
		t.Fatal(err)
	}
	if got := entries(t, final); len(got) != 1 || got[0] != "new.txt" {
		t.Errorf("final holds %v, want [new.txt]", got)
	}
	if got := entries(t, root); len(got) != 1 {
		t.Errorf("root holds %v, want the model alone", got)
	}
	if st, err := os.Stat(final); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("mode %v (%v), want 0755", st.Mode(), err)
	}
}

// TestSwapAllOrNothing makes the last of three renames fail (its source
// is missing): the first two are undone, and the files they replaced are
// back under their names.
func TestSwapAllOrNothing(t *testing.T) {
	dir := t.TempDir()
	var moves []Move
	for _, n := range []string{"a", "b", "c"} {
		write(t, filepath.Join(dir, n), "old "+n)
		from := filepath.Join(dir, atomicfile.TempPrefix+"new-"+n)
		if n != "c" {
			write(t, from, "new "+n)
		}
		moves = append(moves, Move{From: from, To: filepath.Join(dir, n)})
	}
	if err := Swap(moves, true); err == nil {
		t.Fatal("Swap with a missing source succeeded")
	}
	for _, n := range []string{"a", "b", "c"} {
		if got := read(t, filepath.Join(dir, n)); got != "old "+n {
			t.Errorf("%s = %q after the failed swap, want the old file", n, got)
		}
	}
	for _, m := range moves[:2] {
		if _, err := os.Stat(m.From); err != nil {
			t.Errorf("new file %s not back under its temporary name: %v", m.From, err)
		}
		os.Remove(m.From)
	}
	if got := entries(t, dir); len(got) != 3 {
		t.Errorf("dir holds %v", got)
	}

	write(t, moves[2].From, "new c")
	for _, m := range moves[:2] {
		write(t, m.From, "new "+filepath.Base(m.To))
	}
	if err := Swap(moves, true); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b", "c"} {
		if got := read(t, filepath.Join(dir, n)); got != "new "+n {
			t.Errorf("%s = %q, want the new file", n, got)
		}
	}
	if got := entries(t, dir); len(got) != 3 {
		t.Errorf("dir holds %v", got)
	}
}

func TestSwapAfterInterrupt(t *testing.T) {
	dir := t.TempDir()
	from := filepath.Join(dir, "from")
	write(t, from, "x")
	atomicfile.RemoveAll()
	defer atomicfile.Resume()
	if err := Swap([]Move{{From: from, To: filepath.Join(dir, "to")}}, false); !errors.Is(err, atomicfile.ErrInterrupted) {
		t.Fatalf("Swap after an interrupt: %v, want ErrInterrupted", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "to")); err == nil {
		t.Error("renamed after an interrupt")
	}
}

// TestSwapKeepsDirectory: a file never replaces a directory, even with
// overwrite: the directory and what it holds stay.
func TestSwapKeepsDirectory(t *testing.T) {
	dir := t.TempDir()
	from := filepath.Join(dir, atomicfile.TempPrefix+"new")
	write(t, from, "new")
	to := filepath.Join(dir, "to")
	write(t, filepath.Join(to, "keep"), "keep")
	if err := Swap([]Move{{From: from, To: to}}, true); err == nil {
		t.Fatal("a file replaced a directory")
	}
	if got := read(t, filepath.Join(to, "keep")); got != "keep" {
		t.Errorf("the directory's file holds %q", got)
	}
	if got := read(t, from); got != "new" {
		t.Errorf("the new file holds %q", got)
	}
}

// TestSwapDirOverFile: with overwrite, a directory replaces a file (or a
// symbolic link) of its name.
func TestSwapDirOverFile(t *testing.T) {
	root := t.TempDir()
	for _, link := range []bool{false, true} {
		final := filepath.Join(root, "out")
		os.RemoveAll(final)
		if link {
			if err := os.Symlink(root, final); err != nil {
				t.Fatal(err)
			}
		} else {
			write(t, final, "old")
		}
		tmp, err := Temp(root, atomicfile.TempPrefix+"x-*")
		if err != nil {
			t.Fatal(err)
		}
		write(t, filepath.Join(tmp, "new.txt"), "new")
		if err := SwapDir(tmp, final, "", true); err != nil {
			t.Fatalf("link %v: %v", link, err)
		}
		if got := read(t, filepath.Join(final, "new.txt")); got != "new" {
			t.Errorf("link %v: %q", link, got)
		}
		if got := entries(t, root); len(got) != 1 {
			t.Errorf("link %v: root holds %v", link, got)
		}
	}
}
