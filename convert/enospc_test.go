package convert

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	_ "github.com/tpconvert/tpconvert/codec/basic"
	"github.com/tpconvert/tpconvert/fixtures/gen"
	"github.com/tpconvert/tpconvert/formats/tpk"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/internal/testfs"
	"github.com/tpconvert/tpconvert/internal/tmpfs"
	"github.com/tpconvert/tpconvert/stream"
	"github.com/tpconvert/tpconvert/tensor"
)

// fullDisk passes the first left bytes to w and then fails as a write to a
// full file system does.
type fullDisk struct {
	w    io.Writer
	left int64
	path string
}

func (d *fullDisk) Write(p []byte) (int, error) {
	if int64(len(p)) <= d.left {
		d.left -= int64(len(p))
		return d.w.Write(p)
	}
	n, err := d.w.Write(p[:d.left])
	d.left -= int64(n)
	if err == nil {
		err = &fs.PathError{Op: "write", Path: d.path, Err: syscall.ENOSPC}
	}
	return n, err
}

// mustCompress compresses in to out with enospcOpts(codec).
func mustCompress(t *testing.T, in, out, codec string) {
	t.Helper()
	if _, err := CompressFile(context.Background(), in, out, enospcOpts(t, codec)); err != nil {
		t.Fatal(err)
	}
}

// sizeOf returns the size of the file at p.
var sizeOf = testfs.Size

// diskFullAfter makes every output file fail after n bytes until the test
// ends.
func diskFullAfter(t *testing.T, n int64) {
	old := outputWriter
	outputWriter = func(f *atomicfile.File) io.Writer { return &fullDisk{w: f, left: n, path: f.Name()} }
	t.Cleanup(func() { outputWriter = old })
}

func enospcOpts(t *testing.T, name string) CompressOptions {
	c, err := codec.New(name, codec.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return CompressOptions{Options: stream.Options{Workers: 2, MaxMemory: 64 << 20}, Codec: c,
		Selector: stream.Selector{Layers: stream.LayersAll}, Overwrite: true}
}

// checkNothingLost checks that a failed write reported the full disk, left
// the previous output as it was and no temporary file in dir.
func checkNothingLost(t *testing.T, err error, dir, out string, prev []byte) {
	t.Helper()
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "no space left on device") {
		t.Errorf("err = %v, want a 'no space left on device' error", err)
	}
	if err != nil && strings.Contains(err.Error(), "\n") {
		t.Errorf("multi-line error %q", err)
	}
	got, rerr := os.ReadFile(out)
	if rerr != nil || !bytes.Equal(got, prev) {
		t.Errorf("previous output %s changed (%d bytes, %v)", out, len(got), rerr)
	}
	es, _ := os.ReadDir(dir)
	for _, e := range es {
		if strings.HasPrefix(e.Name(), atomicfile.TempPrefix) {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

var prevOutput = bytes.Repeat([]byte("previous output\n"), 1024)

// TestCompressDiskFull makes the output fail at points throughout a
// compression: in the header, the records, the index and the footer.
func TestCompressDiskFull(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "m.safetensors")
	if err := gen.WriteSafetensors(in, gen.Presets["tiny"], tensor.BF16, 1); err != nil {
		t.Fatal(err)
	}
	ref := filepath.Join(dir, "ref.tpk")
	mustCompress(t, in, ref, "f16")
	size := sizeOf(t, ref)
	out := filepath.Join(dir, "m.tpk")
	for _, n := range []int64{0, 10, size / 3, size / 2, size - 200, size - 33, size - 1} {
		t.Run(strconv.FormatInt(n, 10), func(t *testing.T) {
			if err := os.WriteFile(out, prevOutput, 0o644); err != nil {
				t.Fatal(err)
			}
			diskFullAfter(t, n)
			_, err := CompressFile(context.Background(), in, out, enospcOpts(t, "f16"))
			checkNothingLost(t, err, dir, out, prevOutput)
		})
	}
	// With room for every byte, the same compression succeeds.
	diskFullAfter(t, size)
	if _, err := CompressFile(context.Background(), in, out, enospcOpts(t, "f16")); err != nil {
		t.Fatalf("compression into exactly enough space: %v", err)
	}
}

// TestRestoreDiskFull makes single-file restores (safetensors and GGUF)
// fail at points throughout the output.
func TestRestoreDiskFull(t *testing.T) {
	for _, kind := range []string{"safetensors", "gguf"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			in := filepath.Join(dir, "m."+kind)
			if err := gen.WriteModel(in, gen.Presets["tiny"], tensor.F32, 1); err != nil {
				t.Fatal(err)
			}
			tpkPath := filepath.Join(dir, "m.tpk")
			mustCompress(t, in, tpkPath, "f16")
			size := sizeOf(t, in)
			out := filepath.Join(dir, "restored."+kind)
			for _, n := range []int64{0, 100, size / 2, size - 1} {
				if err := os.WriteFile(out, prevOutput, 0o644); err != nil {
					t.Fatal(err)
				}
				diskFullAfter(t, n)
				_, err := RestoreFile(context.Background(), tpkPath, out, RestoreOptions{Overwrite: true})
				checkNothingLost(t, err, dir, out, prevOutput)
			}
		})
	}
}

// tmpfsUsed returns the bytes in use on the file system holding dir.
func tmpfsUsed(t *testing.T, dir string) int64 {
	t.Helper()
	used, _ := tmpfs.Stat(t, dir)
	return used
}

// TestDiskFullTmpfs fills a real 2 MiB file system: a compression, a
// single-file restore and a sharded restore whose outputs do not fit must
// each fail with ENOSPC, keep the previous outputs and free the space they
// took.
func TestDiskFullTmpfs(t *testing.T) {
	full := tmpfs.Mount(t, 2<<20, " (TestCompressDiskFull and TestRestoreDiskFull inject the error instead)")
	src := t.TempDir()
	in := filepath.Join(src, "m.safetensors")
	if err := gen.WriteSafetensors(in, gen.Presets["tiny"], tensor.BF16, 1); err != nil { // 3.3 MB
		t.Fatal(err)
	}
	tpkPath := filepath.Join(src, "m.tpk")
	mustCompress(t, in, tpkPath, "none")
	ckpt := filepath.Join(src, "ckpt")
	if err := gen.WriteCheckout(ckpt, gen.Presets["tiny"], tensor.F16, 1, 1<<20); err != nil {
		t.Fatal(err)
	}
	ckptTPK := filepath.Join(src, "ckpt.tpk")
	mustCompress(t, ckpt, ckptTPK, "none")

	// Over a previous output: it stays, and the space is given back.
	for _, c := range []struct {
		name, out string
		run       func(out string) error
	}{
		{"compress", "m.tpk", func(out string) error {
			_, err := CompressFile(context.Background(), in, out, enospcOpts(t, "none"))
			return err
		}},
		{"restore", "m.safetensors", func(out string) error {
			_, err := RestoreFile(context.Background(), tpkPath, out, RestoreOptions{Overwrite: true})
			return err
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			out := filepath.Join(full, c.out)
			if err := os.WriteFile(out, prevOutput, 0o644); err != nil {
				t.Fatal(err)
			}
			used := tmpfsUsed(t, full)
			checkNothingLost(t, c.run(out), full, out, prevOutput)
			if u := tmpfsUsed(t, full); u != used {
				t.Errorf("%d bytes in use after the failure, %d before", u, used)
			}
			os.Remove(out)
		})
	}
	t.Run("restore checkout", func(t *testing.T) {
		out := filepath.Join(full, "ckpt")
		_, err := RestoreFile(context.Background(), ckptTPK, out, RestoreOptions{})
		if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "no space left on device") {
			t.Errorf("err = %v, want a 'no space left on device' error", err)
		}
		if _, serr := os.Lstat(out); !errors.Is(serr, fs.ErrNotExist) {
			t.Errorf("output directory left behind (%v)", serr)
		}
		if u := tmpfsUsed(t, full); u != 0 {
			t.Errorf("%d bytes in use after the failure", u)
		}

		// Into an existing checkout: its files stay as they were.
		if err := os.Mkdir(out, 0o755); err != nil {
			t.Fatal(err)
		}
		r, err := tpk.Open(ckptTPK)
		if err != nil {
			t.Fatal(err)
		}
		shard := filepath.Join(out, r.Meta().Files[0].Name)
		r.Close()
		if err := os.WriteFile(shard, prevOutput, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err = RestoreFile(context.Background(), ckptTPK, out, RestoreOptions{Overwrite: true})
		checkNothingLost(t, err, out, shard, prevOutput)
	})
}
