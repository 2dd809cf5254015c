// Package convert is tpconvert's library API: it opens checkpoints of any
// supported kind, compresses them into .tpk files and restores .tpk files
// into the container they came from, writing every output atomically. The
// command-line tool is a thin layer over it.
package convert

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/tpconvert/tpconvert/formats"
	// The formats convert reads and writes register themselves.
	_ "github.com/tpconvert/tpconvert/formats/gguf"
	_ "github.com/tpconvert/tpconvert/formats/safetensors"
	"github.com/tpconvert/tpconvert/formats/tpk"
)

// OpenSource opens a .safetensors file, a .gguf file or a Hugging Face
// checkout directory, detected by content, not by name (formats.Detect),
// with its registered format's opener.
func OpenSource(path string) (formats.Source, error) {
	kind, err := formats.Detect(path)
	if err != nil {
		return nil, err
	}
	f, err := formats.Lookup(kind)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if f.Open == nil {
		return nil, fmt.Errorf("%s is already a %s file (use 'tpconvert restore' to decode it)", path, f.Ext)
	}
	return f.Open(path)
}

// records is the record container compressed checkpoints are written to
// and restored from.
const records = formats.TPK

// openRecords opens the record container at path.
func openRecords(path string) (formats.RecordSource, error) {
	f, err := formats.Lookup(records)
	if err != nil {
		return nil, err
	}
	return f.OpenRecords(path)
}

// newRecordSink creates the record container a compressed checkpoint is
// written to.
func newRecordSink(w io.Writer, meta *formats.Meta) (formats.RecordSink, error) {
	f, err := formats.Lookup(records)
	if err != nil {
		return nil, err
	}
	return f.NewRecordSink(w, meta)
}

// maxRecords is the most tensors a record container holds.
const maxRecords = tpk.MaxTensors

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
