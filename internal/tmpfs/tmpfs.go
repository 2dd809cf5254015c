// Package tmpfs gives tests a small real file system that can fill up:
// a size-limited tmpfs mounted on a temporary directory.
package tmpfs

import (
	"os"
	"strconv"
	"syscall"
	"testing"
)

// Mount mounts a tmpfs of size bytes on a fresh directory and unmounts it
// when the test ends. It skips the test when mounting is not possible
// (not root, or no CAP_SYS_ADMIN in a container); why is appended to the
// skip message to say what covers the same path instead.
func Mount(t testing.TB, size int, why string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a size-limited tmpfs needs root" + why)
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+strconv.Itoa(size)); err != nil {
		t.Skipf("cannot mount a tmpfs on %s (%v)%s", dir, err, why)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// Stat returns the bytes in use and the bytes available to an
// unprivileged user on the file system holding dir.
func Stat(t testing.TB, dir string) (used, avail int64) {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize, int64(st.Bavail) * st.Bsize
}
