// Package convert is tpconvert's library API: it opens checkpoints of any
// supported kind, compresses them into .tpk files and restores .tpk files
// into the container they came from, writing every output atomically. The
// command-line tool is a thin layer over it.
package convert

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/formats/gguf"
	"github.com/tpconvert/tpconvert/formats/safetensors"
	"github.com/tpconvert/tpconvert/internal/inputfile"
)

// OpenSource opens a .safetensors file, a .gguf file or a Hugging Face
// checkout directory, detected by content, not by name.
func OpenSource(path string) (formats.Source, error) {
	kind, err := formats.Detect(path)
	if err != nil {
		return nil, err
	}
	switch kind {
	case formats.Safetensors:
		return safetensors.Open(path)
	case formats.GGUF:
		st, err := os.Stat(path)
		if err != nil {
			return nil, err
		}
		if st.IsDir() {
			m, err := inputfile.List(path, ".gguf")
			if err != nil {
				return nil, err
			}
			if len(m) != 1 {
				return nil, fmt.Errorf("%s: %w: directory holds %d *.gguf files (want exactly one)", path, formats.ErrUnknownFormat, len(m))
			}
			path = m[0]
		}
		return gguf.Open(path)
	case formats.TPK:
		return nil, fmt.Errorf("%s is already a .tpk file (use 'tpconvert restore' to decode it)", path)
	}
	return nil, fmt.Errorf("%s: %w", path, formats.ErrUnknownFormat)
}

// sameFile reports whether a and b name the same existing file.
func sameFile(a, b string) bool {
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	if err != nil {
		return false
	}
	return os.SameFile(sa, sb)
}

// inputFiles lists the files a source path stands for.
func inputFiles(path string) []string {
	st, err := os.Stat(path)
	if err != nil || !st.IsDir() {
		return []string{path}
	}
	var out []string
	entries, _ := os.ReadDir(path)
	for _, e := range entries {
		if !e.IsDir() {
			out = append(out, filepath.Join(path, e.Name()))
		}
	}
	return out
}

// checkOutputFile refuses an output file path that cannot name a new
// file: one ending in a path separator, one naming an existing directory,
// or one whose directory does not exist (it is never created: a typo in
// -o must not make a directory tree).
func checkOutputFile(out string) error {
	if strings.HasSuffix(out, string(os.PathSeparator)) {
		return fmt.Errorf("%s: names a directory; give the output file's name", out)
	}
	if st, err := os.Stat(out); err == nil && st.IsDir() {
		return fmt.Errorf("%s: is a directory", out)
	}
	parent := filepath.Dir(out)
	st, err := os.Stat(parent)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s: directory %s does not exist", out, parent)
	case err != nil:
		return err
	case !st.IsDir():
		return fmt.Errorf("%s: %s is not a directory", out, parent)
	}
	return nil
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// checkNotInput refuses an output path that is one of the input's files.
func checkNotInput(out string, inputs ...string) error {
	for _, in := range inputs {
		for _, f := range inputFiles(in) {
			if sameFile(out, f) || filepath.Clean(out) == filepath.Clean(f) {
				return fmt.Errorf("refusing to write %s: it is an input file", out)
			}
		}
		if filepath.Clean(out) == filepath.Clean(in) {
			return fmt.Errorf("refusing to write %s: it is the input", out)
		}
	}
	return nil
}
