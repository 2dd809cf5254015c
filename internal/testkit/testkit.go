// Package testkit holds the helpers that the tests of several packages
// share.
package testkit

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpconvert/tpconvert/batch"
	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
)

// MustCodec returns the registered codec name with default options.
func MustCodec(t testing.TB, name string) codec.Codec {
	t.Helper()
	c, err := codec.New(name, codec.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// NoTemps fails t for every temporary file or directory left under dir.
func NoTemps(t testing.TB, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), atomicfile.TempPrefix) {
			t.Errorf("temporary file left behind: %s", p)
		}
		return nil
	})
}

// OpenSource opens the checkpoint at path (convert.OpenSource), closing
// it when the test ends.
func OpenSource(t testing.TB, path string) formats.Source {
	t.Helper()
	src, err := convert.OpenSource(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

// TensorHashes maps "name/dtype" of every tensor of the checkpoint at
// path to the SHA-256 of its bytes, and returns the checkpoint's metadata.
func TensorHashes(t testing.TB, path string) (map[string][32]byte, *formats.Meta) {
	t.Helper()
	src, err := convert.OpenSource(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	h := map[string][32]byte{}
	for i, ti := range src.Tensors() {
		b, err := src.Bytes(i)
		if err != nil {
			t.Fatal(err)
		}
		h[ti.Name+"/"+ti.DType.String()] = sha256.Sum256(b)
	}
	m := *src.Meta()
	return h, &m
}

// TreeHashes maps every file under dir (slash paths) to its SHA-256, and
// every directory below it ("sub/") to "dir", leaving out run.json files
// (a batch run's times and hosts, which differ by design).
func TreeHashes(t testing.TB, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.IsDir() {
			if rel != "." {
				m[filepath.ToSlash(rel)+"/"] = "dir"
			}
			return nil
		}
		if d.Name() == batch.RunInfoName {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return err
		}
		m[filepath.ToSlash(rel)] = hex.EncodeToString(h.Sum(nil))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// SameTrees fails t for every file or directory that differs between the
// trees a and b (TreeHashes), and when a is empty.
func SameTrees(t testing.TB, a, b string) {
	t.Helper()
	ha, hb := TreeHashes(t, a), TreeHashes(t, b)
	if len(ha) == 0 {
		t.Fatalf("%s is empty", a)
	}
	for k, v := range ha {
		if hb[k] != v {
			t.Errorf("%s: %s in %s, %s in %s", k, v, a, hb[k], b)
		}
	}
	for k := range hb {
		if _, ok := ha[k]; !ok {
			t.Errorf("%s only in %s", k, b)
		}
	}
}
