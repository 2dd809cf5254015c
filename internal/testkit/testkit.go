// Package testkit holds the helpers that the tests of several packages
// share.
package testkit

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
