package safetensors

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"unicode/utf16"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/internal/atomicdir"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/tensor"
)

// DirOptions configures NewDirWriter (formats.DirOptions).
type DirOptions = formats.DirOptions

// bufSize is the write buffer of the shard being written.
const bufSize = 256 << 10

// DirWriter writes a checkout directory: one safetensors file per shard and
// the index file. It implements formats.Sink. Every file is written under a
// temporary name in the directory and renamed into place by Close; after an
// error, or on Abort, the temporary files are removed and no final file is
// created.
type DirWriter struct {
	dir     string
	shards  []*dirShard
	route   []int // tensor i's shard
	next    int
	index   []byte // index file contents; nil when none
	idxName string
	over    bool
	done    bool
	err     error
	temps   []*atomicfile.File
}

var _ formats.Sink = (*DirWriter)(nil)

type dirShard struct {
	name    string
	p       *plan
	left    int // tensors still to write
	f       *atomicfile.File
	bw      *bufio.Writer
	w       *Writer
	closing bool
}

// shardPlan lists the tensors (indices into the tensors argument) of one
// output file.
type shardPlan struct {
	name    string
	fm      *formats.FileMeta
	members []int
}

// NewDirWriter prepares writing tensors, in that (data) order, as a
// checkout in dir, which is created if missing.
//
// Without opts.ShardSize, tensors[i].File selects the file meta.Files[k]
// the tensor goes to; each file keeps its name and is written by a Writer
// with meta.Files[k] as its original (so an unchanged file is reproduced
// byte for byte). When meta.IndexName is set, the index is written too:
// meta.IndexJSON verbatim when every file keeps its size, otherwise the same
// bytes with metadata.total_size replaced by the new total of tensor bytes
// (an index without meta.IndexJSON is generated as transformers writes
// one). The index's weight_map must place every tensor in its file.
//
// With opts.ShardSize > 0, see DirOptions.
func NewDirWriter(dir string, meta *formats.Meta, tensors []tensor.Info, opts DirOptions) (*DirWriter, error) {
	dw, err := planDir(dir, meta, tensors, opts)
	if err != nil {
		return nil, err
	}
	return createDirFiles(dw, dir)
}

// planDir lays out the files of NewDirWriter without creating any.
func planDir(dir string, meta *formats.Meta, tensors []tensor.Info, opts DirOptions) (*DirWriter, error) {
	if opts.ShardSize < 0 {
		return nil, fmt.Errorf("safetensors: negative shard size %d", opts.ShardSize)
	}
	var (
		shards  []shardPlan
		idxName string
		err     error
	)
	if opts.ShardSize > 0 {
		shards, idxName, err = reshard(meta, tensors, opts.ShardSize)
	} else {
		shards, idxName, err = keepShards(meta, tensors)
	}
	if err != nil {
		return nil, err
	}
	names := make(map[string]bool, len(tensors))
	for _, t := range tensors {
		if names[t.Name] {
			return nil, fmt.Errorf("safetensors: tensor %q: duplicate name", t.Name)
		}
		names[t.Name] = true
	}
	dw := &DirWriter{dir: dir, route: make([]int, len(tensors)), idxName: idxName, over: opts.Overwrite}
	seen := make(map[string]bool)
	var total int64
	for k, sp := range shards {
		if !validName(sp.name) || seen[sp.name] || sp.name == idxName {
			return nil, fmt.Errorf("safetensors: invalid or repeated shard file name %q", sp.name)
		}
		seen[sp.name] = true
		sub := make([]tensor.Info, len(sp.members))
		for j, i := range sp.members {
			sub[j] = tensors[i]
			dw.route[i] = k
		}
		p, err := planFile(sub, sp.fm)
		if err != nil {
			return nil, fmt.Errorf("%w (file %s)", err, sp.name)
		}
		for _, t := range p.tensors {
			total += t.Size
		}
		dw.shards = append(dw.shards, &dirShard{name: sp.name, p: p, left: len(sub)})
	}
	if idxName != "" {
		if !validName(idxName) {
			return nil, fmt.Errorf("safetensors: invalid index file name %q", idxName)
		}
		wm := make(map[string]string, len(tensors))
		for i, t := range tensors {
			wm[t.Name] = dw.shards[dw.route[i]].name
		}
		if opts.ShardSize > 0 || len(meta.IndexJSON) == 0 {
			dw.index = buildIndex(total, wm)
		} else {
			dw.index, err = updateIndex(meta, dw.shards, wm, total)
			if err != nil {
				return nil, err
			}
		}
	}
	return dw, nil
}

// CheckDir reports the error NewDirWriter would return for meta and
// tensors (default options) before creating a file, without creating
// anything.
func CheckDir(meta *formats.Meta, tensors []tensor.Info) error {
	_, err := planDir("", meta, tensors, DirOptions{})
	return err
}

// createDirFiles creates dir and every output file planned in dw.
func createDirFiles(dw *DirWriter, dir string) (*DirWriter, error) {
	var err error
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// Create every file now, so that an existing one is refused before
	// any tensor is written.
	for _, s := range dw.shards {
		if s.f, err = dw.create(s.name); err != nil {
			dw.Abort()
			return nil, err
		}
		if s.left == 0 {
			if err := dw.finishShard(s); err != nil {
				dw.Abort()
				return nil, err
			}
		}
	}
	return dw, nil
}

// keepShards plans writing each tensor to the file of meta its File names.
func keepShards(meta *formats.Meta, tensors []tensor.Info) ([]shardPlan, string, error) {
	if meta == nil || len(meta.Files) == 0 {
		return nil, "", errors.New("safetensors: no output files in meta")
	}
	shards := make([]shardPlan, len(meta.Files))
	for k := range meta.Files {
		shards[k] = shardPlan{name: meta.Files[k].Name, fm: &meta.Files[k]}
	}
	for i, t := range tensors {
		if t.File < 0 || t.File >= len(shards) {
			return nil, "", fmt.Errorf("safetensors: tensor %q: file %d out of range [0, %d)", t.Name, t.File, len(shards))
		}
		shards[t.File].members = append(shards[t.File].members, i)
	}
	return shards, meta.IndexName, nil
}

// reshard packs tensors greedily in data order into shards of at most
// shardSize tensor bytes.
func reshard(meta *formats.Meta, tensors []tensor.Info, shardSize int64) ([]shardPlan, string, error) {
	var groups [][]int
	var cur int64
	for i, t := range tensors {
		size, err := tensor.ByteSize(t.DType, t.Shape)
		if err != nil {
			return nil, "", fmt.Errorf("safetensors: tensor %q: %w", t.Name, err)
		}
		if len(groups) == 0 || (cur > 0 && cur+size > shardSize) {
			groups = append(groups, nil)
			cur = 0
		}
		groups[len(groups)-1] = append(groups[len(groups)-1], i)
		cur += size
	}
	if len(groups) == 0 {
		groups = append(groups, nil) // an empty model.safetensors
	}
	shards := make([]shardPlan, len(groups))
	for k, g := range groups {
		name := "model.safetensors"
		if len(groups) > 1 {
			name = fmt.Sprintf("model-%05d-of-%05d.safetensors", k+1, len(groups))
		}
		// Each shard carries the "__metadata__" of the file its first
		// tensor came from (transformers writes the same one to all).
		var fm *formats.FileMeta
		if meta != nil && len(meta.Files) > 0 {
			src := 0
			if len(g) > 0 {
				if f := tensors[g[0]].File; f >= 0 && f < len(meta.Files) {
					src = f
				}
			}
			fm = &formats.FileMeta{Metadata: meta.Files[src].Metadata}
		}
		shards[k] = shardPlan{name: name, fm: fm, members: g}
	}
	idxName := ""
	if len(groups) > 1 {
		idxName = "model" + IndexSuffix
	}
	return shards, idxName, nil
}

// updateIndex returns meta.IndexJSON verbatim when every shard keeps its
// size, or with metadata.total_size replaced by total otherwise. The
// index's weight_map must equal wm.
func updateIndex(meta *formats.Meta, shards []*dirShard, wm map[string]string, total int64) ([]byte, error) {
	orig, err := parseIndex(meta.IndexJSON)
	if err != nil {
		return nil, fmt.Errorf("%w (index %s)", err, meta.IndexName)
	}
	if len(orig) != len(wm) {
		return nil, fmt.Errorf("safetensors: index %s lists %d tensors, writing %d", meta.IndexName, len(orig), len(wm))
	}
	for name, file := range wm {
		if orig[name] != file {
			return nil, fmt.Errorf("safetensors: tensor %q: index %s places it in %q, writing it to %s", name, meta.IndexName, orig[name], file)
		}
	}
	same := len(shards) == len(meta.Files)
	for k, s := range shards {
		if same && s.p.size != meta.Files[k].Size {
			same = false
		}
	}
	if same {
		return bytes.Clone(meta.IndexJSON), nil
	}
	b, _ := SetTotalSize(meta.IndexJSON, total)
	return b, nil
}

// SetTotalSize returns a copy of a checkout's index file with the number
// metadata.total_size replaced by total, every other byte unchanged, and
// whether it was replaced. An index without a numeric metadata.total_size
// is returned as is.
func SetTotalSize(index []byte, total int64) ([]byte, bool) {
	dec := json.NewDecoder(bytes.NewReader(index))
	dec.UseNumber()
	for _, key := range []string{"metadata", "total_size"} {
		if tok, err := dec.Token(); err != nil || tok != json.Delim('{') || !findKey(dec, key) {
			return bytes.Clone(index), false
		}
	}
	tok, err := dec.Token()
	num, ok := tok.(json.Number)
	if err != nil || !ok {
		return bytes.Clone(index), false
	}
	end := int(dec.InputOffset())
	start := end - len(num)
	if start < 0 || string(index[start:end]) != string(num) {
		return bytes.Clone(index), false
	}
	out := append(bytes.Clone(index[:start]), strconv.FormatInt(total, 10)...)
	return append(out, index[end:]...), true
}

// findKey reads the members of the JSON object dec is in up to and
// including the name key, and reports whether it found it before the
// object ended or the input broke off.
func findKey(dec *json.Decoder, key string) bool {
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return false
		}
		if k == key {
			return true
		}
		var skip json.RawMessage
		if dec.Decode(&skip) != nil {
			return false
		}
	}
	return false
}

// buildIndex returns an index as transformers writes it: json.dumps(index,
// indent=2, sort_keys=True) followed by a newline.
func buildIndex(total int64, wm map[string]string) []byte {
	names := make([]string, 0, len(wm))
	for n := range wm {
		names = append(names, n)
	}
	slices.Sort(names) // byte order of UTF-8 is code point order, as Python sorts
	b := []byte("{\n  \"metadata\": {\n    \"total_size\": ")
	b = strconv.AppendInt(b, total, 10)
	b = append(b, "\n  },\n  \"weight_map\": {"...)
	for i, n := range names {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, "\n    "...)
		b = appendPyString(b, n)
		b = append(b, ": "...)
		b = appendPyString(b, wm[n])
	}
	if len(names) > 0 {
		b = append(b, "\n  "...)
	}
	return append(b, "}\n}\n"...)
}

// appendPyString appends s as Python's json.dumps writes a string with
// ensure_ascii: everything outside printable ASCII as \uXXXX (UTF-16
// surrogate pairs beyond the BMP).
func appendPyString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	u := func(r rune) {
		b = append(b, '\\', 'u', hex[r>>12&15], hex[r>>8&15], hex[r>>4&15], hex[r&15])
	}
	b = append(b, '"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r == '\n':
			b = append(b, '\\', 'n')
		case r == '\r':
			b = append(b, '\\', 'r')
		case r == '\t':
			b = append(b, '\\', 't')
		case r == '\b':
			b = append(b, '\\', 'b')
		case r == '\f':
			b = append(b, '\\', 'f')
		case r >= 0x20 && r <= 0x7e:
			b = append(b, byte(r))
		case r > 0xffff:
			r1, r2 := utf16.EncodeRune(r)
			u(r1)
			u(r2)
		default:
			u(r)
		}
	}
	return append(b, '"')
}

func (dw *DirWriter) create(name string) (*atomicfile.File, error) {
	f, err := atomicfile.Create(filepath.Join(dw.dir, name), dw.over)
	if err != nil {
		return nil, err
	}
	dw.temps = append(dw.temps, f)
	return f, nil
}

// WriteTensor writes the next tensor to its shard. After an error every
// temporary file is removed and every call fails.
func (dw *DirWriter) WriteTensor(t tensor.Info, data []byte) error {
	if dw.err != nil {
		return dw.err
	}
	if dw.done {
		return errors.New("safetensors: WriteTensor after Close")
	}
	if err := dw.writeTensor(t, data); err != nil {
		return dw.fail(err)
	}
	return nil
}

func (dw *DirWriter) writeTensor(t tensor.Info, data []byte) error {
	return dw.writeNext(t, func(w *Writer) error { return w.WriteTensor(t, data) })
}

var _ formats.PartSink = (*DirWriter)(nil)

// WriteTensorPart writes bytes [off, off+len(data)) of the next tensor to
// its shard (formats.PartSink). After an error every temporary file is
// removed and every call fails.
func (dw *DirWriter) WriteTensorPart(t tensor.Info, off int64, data []byte) error {
	if dw.err != nil {
		return dw.err
	}
	if dw.done {
		return errors.New("safetensors: WriteTensor after Close")
	}
	err := dw.writeNext(t, func(w *Writer) error { return w.WriteTensorPart(t, off, data) })
	if err != nil {
		return dw.fail(err)
	}
	return nil
}

// writeNext writes (all or part of) the next tensor t to its shard's
// Writer with write, and finishes the shard after its last tensor.
func (dw *DirWriter) writeNext(t tensor.Info, write func(w *Writer) error) error {
	if dw.next >= len(dw.route) {
		return fmt.Errorf("safetensors: tensor %q: all %d tensors already written", t.Name, len(dw.route))
	}
	s := dw.shards[dw.route[dw.next]]
	if s.w == nil {
		s.bw = bufio.NewWriterSize(s.f, bufSize)
		s.w = &Writer{w: s.bw, p: s.p}
	}
	before := s.w.next
	if err := write(s.w); err != nil {
		return err
	}
	if s.w.next == before {
		return nil // a part; the tensor is not complete yet
	}
	dw.next++
	s.left--
	if s.left == 0 {
		return dw.finishShard(s)
	}
	return nil
}

// finishShard completes a shard whose tensors are all written and syncs it
// (the rename waits for Close), releasing its buffer.
func (dw *DirWriter) finishShard(s *dirShard) error {
	if s.w == nil {
		s.bw = bufio.NewWriterSize(s.f, 4096)
		s.w = &Writer{w: s.bw, p: s.p}
	}
	if err := s.w.Close(); err != nil {
		return err
	}
	if err := s.bw.Flush(); err != nil {
		return fmt.Errorf("safetensors: %s: %w", s.name, err)
	}
	s.bw = nil
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("safetensors: %s: %w", s.name, err)
	}
	return nil
}

// Close checks that every tensor was written, writes the index and renames
// every file into place. On error nothing is left under a final name.
func (dw *DirWriter) Close() error {
	if dw.err != nil {
		return dw.err
	}
	if dw.done {
		return nil
	}
	dw.done = true
	if dw.next < len(dw.route) {
		return dw.fail(fmt.Errorf("safetensors: closed after %d of %d tensors", dw.next, len(dw.route)))
	}
	if dw.index != nil {
		f, err := dw.create(dw.idxName)
		if err != nil {
			return dw.fail(err)
		}
		if _, err := f.Write(dw.index); err != nil {
			return dw.fail(fmt.Errorf("safetensors: %s: %w", dw.idxName, err))
		}
	}
	// Every file, or none, replaces its namesake: no partial checkout,
	// and a failure keeps the files that were there.
	moves := make([]atomicdir.Move, len(dw.temps))
	for i, f := range dw.temps {
		if err := f.Prepare(); err != nil {
			return dw.fail(err)
		}
		moves[i] = atomicdir.Move{From: f.Name(), To: f.Path}
	}
	if err := atomicdir.Swap(moves, dw.over); err != nil {
		return dw.fail(err)
	}
	for _, f := range dw.temps {
		f.Detach()
	}
	return nil
}

// fail records err and removes every temporary file.
func (dw *DirWriter) fail(err error) error {
	dw.err = err
	dw.Abort()
	return err
}

// Abort removes every temporary file; files already renamed into place by
// a successful Close stay. It is safe to call more than once and after
// Close, so `defer dw.Abort()` is the usual pattern.
func (dw *DirWriter) Abort() {
	for _, f := range dw.temps {
		f.Abort()
	}
	if dw.err == nil && !dw.done {
		dw.err = errors.New("safetensors: directory writer aborted")
	}
}
