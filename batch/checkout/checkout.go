// Package checkout finds the models of a batch: checkout directories of
// weight files and the other files beside them.
package checkout

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/internal/inputfile"
)

// Checkout is one model of a batch: a directory holding weight files.
type Checkout struct {
	// Name is the model's directory name in the output: the checkout
	// directory's base name.
	Name string `json:"name"`
	// Dir is the checkout directory as found.
	Dir string `json:"dir"`
	// Weights are the top-level *.safetensors and *.gguf files, by name.
	Weights []WeightFile `json:"weights"`
	// Files are every other regular file (subdirectories included), as
	// slash-separated paths relative to Dir, sorted.
	Files []string `json:"files"`
}

// WeightFile is one weight file of a checkout: one unit of batch work.
type WeightFile struct {
	// Name is the file's base name in the checkout.
	Name string `json:"name"`
	// Kind is its container, detected from its content.
	Kind formats.Kind `json:"kind"`
	// Output is the name of its .tpk file in the converted directory: Name
	// with its extension replaced by .tpk, or Name + ".tpk" when two
	// weight files would otherwise get the same name.
	Output string `json:"output"`
	// Size is the file's size when the checkout was found.
	Size int64 `json:"size"`
}

// Names reserved in a converted model directory besides the .tpk files.
const (
	ManifestName = "manifest.json"
	RunInfoName  = "run.json"
)

// maxWalkDepth bounds how deep Find descends into a checkout.
const maxWalkDepth = 32

// Find expands the batch sources: each is a checkout directory
// (it holds *.safetensors or *.gguf files at its top level) or a directory
// of checkouts (it holds no weight files; its subdirectories that do are
// the checkouts, the others are named in the returned notes, hidden ones
// are ignored). Symbolic
// links are followed, so a Hugging Face cache snapshot works as a source.
// Directories named .git, a top-level .cache, temporary files of tpconvert
// and the directory skip (the batch output) are left out. Checkouts are
// returned sorted by name; two with the same name are an error.
func Find(srcs []string, skip string) ([]Checkout, []string, error) {
	var skipInfo os.FileInfo
	if skip != "" {
		skipInfo, _ = os.Stat(skip)
	}
	var (
		out   []Checkout
		notes []string
	)
	for _, src := range srcs {
		st, err := os.Stat(src)
		if err != nil {
			return nil, nil, err
		}
		if !st.IsDir() {
			return nil, nil, fmt.Errorf("%s is not a directory (a batch source is a checkout directory or a directory of checkouts; use 'tpconvert compress' for one file)", src)
		}
		ws, err := findWeights(src)
		if err != nil {
			return nil, nil, err
		}
		if len(ws) > 0 {
			c, err := newCheckout(src, ws, skipInfo)
			if err != nil {
				return nil, nil, err
			}
			out = append(out, c)
			continue
		}
		entries, err := os.ReadDir(src)
		if err != nil {
			return nil, nil, err
		}
		found := 0
		for _, e := range entries {
			sub := filepath.Join(src, e.Name())
			if strings.HasPrefix(e.Name(), ".") {
				continue // .git, .cache, temporary files: never a checkout
			}
			st, err := os.Stat(sub)
			if err != nil || !st.IsDir() || (skipInfo != nil && os.SameFile(st, skipInfo)) {
				continue
			}
			ws, err := findWeights(sub)
			if err != nil {
				return nil, nil, err
			}
			if len(ws) == 0 {
				notes = append(notes, fmt.Sprintf("%s: no *.safetensors or *.gguf files; skipped", sub))
				continue
			}
			c, err := newCheckout(sub, ws, skipInfo)
			if err != nil {
				return nil, nil, err
			}
			out = append(out, c)
			found++
		}
		if found == 0 {
			return nil, nil, fmt.Errorf("%s: holds no *.safetensors or *.gguf files, and none of its subdirectories does", src)
		}
	}
	slices.SortFunc(out, func(a, b Checkout) int { return strings.Compare(a.Name, b.Name) })
	for i := 1; i < len(out); i++ {
		if out[i].Name == out[i-1].Name {
			return nil, nil, fmt.Errorf("two checkouts are named %q (%s and %s): model names must be unique in a batch", out[i].Name, out[i-1].Dir, out[i].Dir)
		}
	}
	return out, notes, nil
}

// skipped reports names never taken as part of a checkout.
func skipped(name string) bool {
	return name == ".git" || strings.HasPrefix(name, atomicfile.TempPrefix)
}

// IsWeightName reports whether a top-level file name is a weight file.
func IsWeightName(name string) bool {
	return strings.HasSuffix(name, ".safetensors") || strings.HasSuffix(name, ".gguf")
}

// findWeights lists dir's top-level weight files, checking each one's
// content matches its name.
func findWeights(dir string) ([]WeightFile, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var ws []WeightFile
	for _, e := range entries {
		if !IsWeightName(e.Name()) || skipped(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		st, err := inputfile.Regular(p)
		if err != nil {
			return nil, err
		}
		kind, err := formats.Detect(p)
		if err != nil {
			return nil, err
		}
		want := formats.Safetensors
		if strings.HasSuffix(e.Name(), ".gguf") {
			want = formats.GGUF
		}
		if kind != want {
			return nil, fmt.Errorf("%s: content is %s, not %s", p, kind, want)
		}
		ws = append(ws, WeightFile{Name: e.Name(), Kind: kind, Size: st.Size()})
	}
	stems := map[string]int{}
	for _, w := range ws {
		stems[stem(w.Name)]++
	}
	for i := range ws {
		if stems[stem(ws[i].Name)] > 1 {
			ws[i].Output = ws[i].Name + ".tpk"
		} else {
			ws[i].Output = stem(ws[i].Name) + ".tpk"
		}
	}
	return ws, nil
}

func stem(name string) string { return strings.TrimSuffix(name, filepath.Ext(name)) }

func newCheckout(dir string, ws []WeightFile, skip os.FileInfo) (Checkout, error) {
	c := Checkout{Name: filepath.Base(filepath.Clean(dir)), Dir: dir, Weights: ws}
	if !ValidName(c.Name) || strings.HasPrefix(c.Name, ".") {
		return c, fmt.Errorf("%s: a checkout's directory name must not start with a dot", dir)
	}
	isWeight := map[string]bool{}
	reserved := map[string]bool{ManifestName: true, RunInfoName: true}
	for _, w := range ws {
		isWeight[w.Name] = true
		reserved[w.Output] = true
	}
	seen := map[[2]uint64]bool{}
	var walk func(abs, rel string, depth int) error
	walk = func(abs, rel string, depth int) error {
		if depth > maxWalkDepth {
			return fmt.Errorf("%s: directories nested deeper than %d levels", abs, maxWalkDepth)
		}
		st, err := os.Stat(abs)
		if err != nil {
			return err
		}
		if id, ok := fileID(st); ok {
			if seen[id] {
				return nil // a symbolic link back to a directory already walked
			}
			seen[id] = true
		}
		entries, err := os.ReadDir(abs)
		if err != nil {
			return err
		}
		for _, e := range entries {
			name := e.Name()
			if skipped(name) || (depth == 0 && name == ".cache") {
				continue
			}
			p := filepath.Join(abs, name)
			r := path.Join(rel, name)
			st, err := os.Stat(p)
			if errors.Is(err, fs.ErrNotExist) {
				continue // a dangling symbolic link
			}
			if err != nil {
				return err
			}
			switch {
			case st.IsDir():
				if skip != nil && os.SameFile(st, skip) {
					continue
				}
				if depth == 0 && reserved[name] {
					return fmt.Errorf("%s: the name %s is reserved for the converted model's files", p, name)
				}
				if err := walk(p, r, depth+1); err != nil {
					return err
				}
			case st.Mode().IsRegular():
				if depth == 0 && isWeight[name] {
					continue
				}
				if depth == 0 && reserved[name] {
					return fmt.Errorf("%s: the name %s is reserved for the converted model's files", p, name)
				}
				c.Files = append(c.Files, r)
			}
		}
		return nil
	}
	if err := walk(dir, "", 0); err != nil {
		return c, err
	}
	slices.Sort(c.Files)
	return c, nil
}

// fileID returns a file's device and inode.
func fileID(st os.FileInfo) ([2]uint64, bool) {
	s, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return [2]uint64{}, false
	}
	return [2]uint64{uint64(s.Dev), uint64(s.Ino)}, true
}

// ValidName reports whether name is a plain file name (no directory part).
func ValidName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, `/\`+"\x00") && filepath.Base(name) == name
}

// ValidRelPath reports whether p is a slash-separated relative path that
// stays inside its directory.
func ValidRelPath(p string) bool {
	if p == "" || strings.ContainsAny(p, `\`+"\x00") || path.IsAbs(p) || path.Clean(p) != p {
		return false
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." || part == "." || part == "" {
			return false
		}
	}
	return true
}
