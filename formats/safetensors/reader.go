package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/internal/inputfile"
	"github.com/tpconvert/tpconvert/internal/mmap"
	"github.com/tpconvert/tpconvert/tensor"
)

// IndexSuffix ends the name of a sharded checkout's index file
// (model.safetensors.index.json).
const IndexSuffix = ".safetensors.index.json"

// Reader is an opened safetensors file or checkout. It implements
// formats.Source.
type Reader struct {
	maps    []*mmap.Map // one per file; nil entries for in-memory files
	data    [][]byte    // each file's bytes
	tensors []tensor.Info
	meta    formats.Meta
}

var _ formats.Source = (*Reader)(nil)

// parsedFile is one validated safetensors file.
type parsedFile struct {
	meta    formats.FileMeta
	hdr     *header
	order   []int // hdr.tensors indices by data offset
	dataOff int64 // absolute offset of the data section
}

// parseFile validates a whole safetensors file held in data.
func parseFile(name string, data []byte) (*parsedFile, error) {
	size := int64(len(data))
	if size < 8 {
		return nil, formatErr("", "file of %d bytes is too short for the 8-byte header length", size)
	}
	n := binary.LittleEndian.Uint64(data)
	if n > MaxHeaderSize {
		return nil, formatErr("", "header length %d exceeds the %d-byte limit", n, MaxHeaderSize)
	}
	if n > uint64(size-8) {
		return nil, formatErr("", "header length %d exceeds the file size (%d bytes)", n, size)
	}
	raw := data[8 : 8+n]
	trimmed := bytes.TrimRight(raw, " ")
	h, err := parseHeader(trimmed)
	if err != nil {
		return nil, err
	}
	dataOff := 8 + int64(n)
	order, err := layout(h.tensors, size-dataOff)
	if err != nil {
		return nil, err
	}
	return &parsedFile{
		meta: formats.FileMeta{
			Name:      name,
			Header:    bytes.Clone(trimmed),
			HeaderPad: len(raw) - len(trimmed),
			Metadata:  h.metadata,
			Size:      size,
		},
		hdr:     h,
		order:   order,
		dataOff: dataOff,
	}, nil
}

// Open opens a .safetensors file, or a Hugging Face checkout directory:
// with a *.safetensors.index.json, the shards its weight_map names; without,
// every *.safetensors file in name order.
//
// Tensors are listed file by file, then by data offset. The files of a
// sharded checkout are taken in name order (model-00001-of-00003 first),
// not in the order the index's weight_map first mentions them: transformers
// writes the weight_map sorted by tensor name, which would start with the
// last shard when it holds lm_head.weight.
//
// In a checkout every tensor must be in the shard the index names, every
// name in the index must be in its shard, and no name may appear twice.
func Open(path string) (*Reader, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	r := &Reader{meta: formats.Meta{Kind: formats.Safetensors}}
	if fi.IsDir() {
		err = r.openDir(path)
	} else {
		err = r.addMapped(path)
	}
	if err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// addMapped maps and validates one file and appends its tensors.
func (r *Reader) addMapped(path string) error {
	m, err := mmap.Open(path)
	if err != nil {
		return err
	}
	pf, err := parseFile(filepath.Base(path), m.Data)
	if err != nil {
		m.Close()
		return inFile(path, err)
	}
	r.maps = append(r.maps, m)
	r.add(pf, m.Data)
	return nil
}

// add appends a parsed file and its tensors in storage order.
func (r *Reader) add(pf *parsedFile, data []byte) {
	k := len(r.meta.Files)
	r.meta.Files = append(r.meta.Files, pf.meta)
	r.data = append(r.data, data)
	for _, i := range pf.order {
		e := &pf.hdr.tensors[i]
		r.tensors = append(r.tensors, tensor.Info{
			Name:   e.name,
			DType:  e.dtype,
			Shape:  e.shape,
			Offset: pf.dataOff + int64(e.begin),
			Size:   int64(e.end - e.begin),
			File:   k,
		})
	}
}

// checkUnique refuses a name that appears in two files.
func (r *Reader) checkUnique() error {
	seen := make(map[string]int, len(r.tensors))
	for _, t := range r.tensors {
		if k, dup := seen[t.Name]; dup {
			return &FormatError{Tensor: t.Name, Err: fmt.Errorf("appears in both %s and %s", r.meta.Files[k].Name, r.meta.Files[t.File].Name)}
		}
		seen[t.Name] = t.File
	}
	return nil
}

func (r *Reader) openDir(dir string) error {
	idx, err := findIndex(dir)
	if err != nil {
		return err
	}
	if idx == "" {
		return r.openFiles(dir)
	}
	idxPath := filepath.Join(dir, idx)
	raw, err := readCapped(idxPath, MaxHeaderSize)
	if err != nil {
		return err
	}
	wm, err := parseIndex(raw)
	if err != nil {
		return inFile(idxPath, err)
	}
	r.meta.IndexName = idx
	r.meta.IndexJSON = raw
	var shards []string
	for _, f := range wm {
		shards = append(shards, f)
	}
	slices.Sort(shards)
	shards = slices.Compact(shards)
	for _, name := range shards {
		if !validName(name) {
			return inFile(idxPath, formatErr("", "weight_map names shard %q, which is not a file name in the checkout directory", name))
		}
		path := filepath.Join(dir, name)
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return inFile(idxPath, &FormatError{Err: fmt.Errorf("weight_map names shard %s, which does not exist: %w", name, err)})
		}
		start := len(r.tensors)
		if err := r.addMapped(path); err != nil {
			return err
		}
		for _, t := range r.tensors[start:] {
			switch want, ok := wm[t.Name]; {
			case !ok:
				return inFile(path, &FormatError{Tensor: t.Name, Err: fmt.Errorf("not in the index %s", idx)})
			case want != name:
				return inFile(path, &FormatError{Tensor: t.Name, Err: fmt.Errorf("the index %s places it in %s", idx, want)})
			}
		}
	}
	if err := r.checkUnique(); err != nil {
		return inFile(dir, err)
	}
	if len(r.tensors) != len(wm) {
		found := make(map[string]bool, len(r.tensors))
		for _, t := range r.tensors {
			found[t.Name] = true
		}
		names := make([]string, 0, len(wm))
		for n := range wm {
			if !found[n] {
				names = append(names, n)
			}
		}
		slices.Sort(names)
		n := names[0]
		return inFile(filepath.Join(dir, wm[n]), &FormatError{Tensor: n, Err: fmt.Errorf("missing, though the index %s places it here", idx)})
	}
	return nil
}

// openFiles opens every *.safetensors file of dir in name order.
func (r *Reader) openFiles(dir string) error {
	files, err := inputfile.List(dir, ".safetensors")
	if err != nil {
		return err
	}
	if len(files) == 0 {
		return inFile(dir, formatErr("", "directory holds no *.safetensors file"))
	}
	for _, p := range files {
		if err := r.addMapped(p); err != nil {
			return err
		}
	}
	if err := r.checkUnique(); err != nil {
		return inFile(dir, err)
	}
	return nil
}

// findIndex returns the name of dir's *.safetensors.index.json, "" when
// there is none. With several, model.safetensors.index.json is chosen.
func findIndex(dir string) (string, error) {
	m, err := inputfile.List(dir, IndexSuffix)
	if err != nil {
		return "", err
	}
	switch len(m) {
	case 0:
		return "", nil
	case 1:
		return filepath.Base(m[0]), nil
	}
	for _, p := range m {
		if filepath.Base(p) == "model"+IndexSuffix {
			return "model" + IndexSuffix, nil
		}
	}
	return "", inFile(dir, formatErr("", "several index files (%s), none of them model%s", strings.Join(m, ", "), IndexSuffix))
}

// validName reports whether name is a plain file name (no directory part).
func validName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, `/\`+"\x00") && filepath.Base(name) == name
}

// readCapped reads a whole file of at most limit bytes.
func readCapped(path string, limit int64) ([]byte, error) {
	f, err := inputfile.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, inFile(path, formatErr("", "file exceeds %d bytes", limit))
	}
	return b, nil
}

// indexFile is the part of a checkout index this package reads.
type indexFile struct {
	WeightMap map[string]string `json:"weight_map"`
}

// parseIndex returns the weight_map (tensor name to shard file) of an index.
func parseIndex(raw []byte) (map[string]string, error) {
	b := bytes.TrimLeft(raw, " \t\r\n")
	if len(b) == 0 || b[0] != '{' {
		return nil, formatErr("", "index is not a JSON object")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		return nil, formatErr("", "index: %w", err)
	}
	wmRaw, ok := fields["weight_map"]
	if !ok || len(wmRaw) == 0 || wmRaw[0] != '{' {
		return nil, formatErr("", "index has no weight_map object")
	}
	var idx indexFile
	if err := json.Unmarshal(b, &idx); err != nil {
		return nil, formatErr("", "index: %w", err)
	}
	if len(idx.WeightMap) == 0 {
		return nil, formatErr("", "index weight_map is empty")
	}
	if _, ok := idx.WeightMap[metadataKey]; ok {
		return nil, formatErr(metadataKey, "index weight_map names a tensor %s", metadataKey)
	}
	return idx.WeightMap, nil
}

// Tensors returns the tensors in storage order: file by file (see Open),
// then by data offset. Offset is absolute in the file Meta().Files[File].
func (r *Reader) Tensors() []tensor.Info { return slices.Clone(r.tensors) }

// Meta returns the checkout's metadata: per file its name, verbatim header,
// header padding, "__metadata__" and size, and for a sharded checkout the
// index file's name and bytes.
func (r *Reader) Meta() *formats.Meta { return &r.meta }

// Bytes returns tensor i's bytes. The slice aliases the read-only memory
// map and is valid until Close.
func (r *Reader) Bytes(i int) ([]byte, error) {
	if i < 0 || i >= len(r.tensors) {
		return nil, fmt.Errorf("safetensors: tensor index %d out of range [0, %d)", i, len(r.tensors))
	}
	t := &r.tensors[i]
	d := r.data[t.File]
	if d == nil {
		return nil, fmt.Errorf("safetensors: tensor %q: reader is closed", t.Name)
	}
	if t.File < len(r.maps) {
		r.maps[t.File].WillNeed(t.Offset, t.Size) // start readahead of the whole tensor
	}
	return d[t.Offset : t.Offset+t.Size : t.Offset+t.Size], nil
}

// Release lets the pages of tensor i's bytes leave resident memory.
func (r *Reader) Release(i int) {
	if i < 0 || i >= len(r.tensors) {
		return
	}
	t := &r.tensors[i]
	if t.File < len(r.maps) {
		r.maps[t.File].Release(t.Offset, t.Size)
	}
}

// Close unmaps every file. Slices returned by Bytes become invalid.
func (r *Reader) Close() error {
	var first error
	for _, m := range r.maps {
		if err := m.Close(); err != nil && first == nil {
			first = err
		}
	}
	r.maps = nil
	clear(r.data)
	return first
}

// ReleaseRange lets the pages of bytes [off, off+n) of tensor i leave
// resident memory (formats.RangeReleaser).
func (r *Reader) ReleaseRange(i int, off, n int64) {
	if i < 0 || i >= len(r.tensors) {
		return
	}
	t := &r.tensors[i]
	if t.File < len(r.maps) && off >= 0 && off < t.Size {
		r.maps[t.File].Release(t.Offset+off, min(n, t.Size-off))
	}
}
