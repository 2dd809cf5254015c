// Package formats defines the seams between checkpoint containers and the
// conversion pipeline: a Source hands out tensors of an input file read in
// place (memory-mapped), a Sink writes tensors in a fixed, announced order.
// One package per container implements them: formats/safetensors,
// formats/gguf and formats/tpk.
package formats

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/tpconvert/tpconvert/internal/inputfile"
	"github.com/tpconvert/tpconvert/tensor"
)

// Kind names a container format.
type Kind string

// Container kinds. The values are written to .tpk files.
const (
	Safetensors Kind = "safetensors"
	GGUF        Kind = "gguf"
	TPK         Kind = "tpk"
)

// KindOfName returns the container a file name's extension names, among
// the registered formats a restore writes (.safetensors or .gguf, any
// case), or "" for any other name.
func KindOfName(name string) Kind {
	ext := strings.ToLower(filepath.Ext(name))
	for _, f := range registered(func(a, b *Format) int { return 0 }) {
		if f.NewSink != nil && f.Ext != "" && ext == f.Ext {
			return f.Kind
		}
	}
	return ""
}

// Source is an opened input checkpoint. Tensors are listed in the order
// their bytes are stored (file by file, then by data offset), which is the
// order the pipeline processes and writes them.
type Source interface {
	// Tensors returns the tensors, from the headers only.
	Tensors() []tensor.Info
	// Bytes returns tensor i's stored bytes. The slice aliases the memory
	// map: it is valid until Close, and must not be written to.
	Bytes(i int) ([]byte, error)
	// Release tells the source that tensor i's bytes are no longer needed,
	// so their pages can leave the process's resident memory.
	Release(i int)
	// Meta returns the container metadata, preserved verbatim.
	Meta() *Meta
	Close() error
}

// Sink writes tensors. WriteTensor must be called once per tensor, in the
// order the Sink was created with.
type Sink interface {
	WriteTensor(t tensor.Info, data []byte) error
	// Close finishes the output (index, footer); it does not remove
	// anything on error: the caller owns temporary files.
	Close() error
}

// RangeReleaser is implemented by Sources that can release part of a
// tensor's bytes: the pages of bytes [off, off+n) of tensor i leave the
// process's resident memory, so a tensor read in parts never holds more
// than a part resident.
type RangeReleaser interface {
	ReleaseRange(i int, off, n int64)
}

// PartSink is implemented by Sinks that accept a tensor in parts:
// WriteTensorPart writes data as bytes [off, off+len(data)) of tensor t.
// The parts of a tensor come in order, without gaps, starting at 0; the
// tensor is complete when they cover its size. WriteTensor(t, data) is
// the same as one part holding every byte.
type PartSink interface {
	Sink
	WriteTensorPart(t tensor.Info, off int64, data []byte) error
}

// Meta is everything about a source checkpoint except tensor data that a
// restore needs to rebuild it faithfully.
type Meta struct {
	Kind Kind `json:"kind"`
	// Files holds one entry per source file: one for a single file, one
	// per shard for a sharded checkout (shard files in name order).
	Files []FileMeta `json:"files"`
	// IndexName and IndexJSON hold a sharded checkout's index file
	// (model.safetensors.index.json) name and bytes, verbatim.
	IndexName string `json:"index_name,omitempty"`
	IndexJSON []byte `json:"index_json,omitempty"`
	// GGUF holds a GGUF file's header fields and metadata.
	GGUF *GGUFMeta `json:"gguf,omitempty"`
}

// FileMeta describes one source file.
type FileMeta struct {
	// Name is the file's base name (model-00001-of-00003.safetensors).
	Name string `json:"name"`
	// Header is a safetensors file's JSON header, verbatim (without the
	// 8-byte length prefix and without trailing padding spaces).
	Header []byte `json:"header,omitempty"`
	// HeaderPad is the number of bytes the stored header length exceeds
	// len(Header) (spaces that writers add for alignment).
	HeaderPad int `json:"header_pad,omitempty"`
	// Metadata is the safetensors "__metadata__" object, verbatim JSON
	// (nil when absent).
	Metadata []byte `json:"metadata,omitempty"`
	// Size is the file's size in bytes.
	Size int64 `json:"size"`
}

// GGUFMeta is a GGUF file's header: version, alignment and the metadata
// key/value section as raw bytes (which keeps key order, every value type
// and nested arrays exactly).
type GGUFMeta struct {
	Version   uint32 `json:"version"`
	KVCount   uint64 `json:"kv_count"`
	KV        []byte `json:"kv"`
	Alignment uint64 `json:"alignment"`
	// TailPad is the number of zero bytes between the end of the last
	// tensor and the end of the file (GGUF writers may pad the data
	// section), so restore reproduces the file length.
	TailPad int64 `json:"tail_pad,omitempty"`
	// InfoOrder is the order of the file's tensor infos when it differs
	// from data order (the order of the Source's tensors, and of the
	// records of a .tpk), else nil. A .tpk file keeps it in its index
	// (gguf_info_order) rather than in this object.
	InfoOrder []string `json:"-"`
}

// Limits on the source metadata a .tpk file carries. Restoring writes what
// the metadata describes (padding, alignment gaps, file names), so a
// checkpoint whose metadata exceeds them is refused at compress time and a
// .tpk file whose metadata exceeds them is refused when it is opened, by
// inspect, verify and restore alike.
const (
	// MaxAlignment caps a GGUF source's data alignment (ggml, llama.cpp
	// and the gguf Python package write 32). Restoring writes fewer than
	// MaxAlignment zero bytes before each tensor.
	MaxAlignment = 1 << 16
	// MaxTailPad caps the zero bytes after a GGUF source's last tensor
	// (writers pad the data section to the alignment).
	MaxTailPad = 1 << 16
	// MaxHeaderPad caps the spaces after a safetensors header (writers
	// pad the header to a multiple of 8 bytes).
	MaxHeaderPad = 1 << 12
	// MaxFiles caps the number of source files of a checkout.
	MaxFiles = 1 << 16
)

// ErrMeta is wrapped by every error of Meta.Check.
var ErrMeta = errors.New("formats: invalid source metadata")

// Check validates the sizes and names m implies against the limits above:
// a GGUF alignment that is a power of two of at most MaxAlignment, a tail
// padding of at most MaxTailPad zero bytes, header
// padding of at most MaxHeaderPad spaces, at most MaxFiles files, and file
// and index names that are plain, valid UTF-8 base names (so nothing is
// written outside the output directory).
func (m *Meta) Check() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrMeta}, a...)...)
	}
	switch m.Kind {
	case Safetensors, GGUF:
	default:
		return bad("unknown source container %q", m.Kind)
	}
	if len(m.Files) == 0 || len(m.Files) > MaxFiles {
		return bad("%d source files (1-%d allowed)", len(m.Files), MaxFiles)
	}
	for _, f := range m.Files {
		if !PlainName(f.Name) {
			return bad("source file name %q is not a plain file name", f.Name)
		}
		if f.HeaderPad < 0 || f.HeaderPad > MaxHeaderPad {
			return bad("file %s: header padding of %d bytes (0-%d allowed)", f.Name, f.HeaderPad, MaxHeaderPad)
		}
		if f.Size < 0 {
			return bad("file %s: size %d", f.Name, f.Size)
		}
	}
	if m.IndexName != "" && !PlainName(m.IndexName) {
		return bad("index file name %q is not a plain file name", m.IndexName)
	}
	if m.Kind == GGUF {
		g := m.GGUF
		if g == nil {
			return bad("GGUF source without GGUF metadata")
		}
		if len(m.Files) != 1 {
			return bad("GGUF source of %d files", len(m.Files))
		}
		if g.Alignment == 0 || g.Alignment&(g.Alignment-1) != 0 || g.Alignment > MaxAlignment {
			return bad("GGUF alignment %d (a power of two up to %d allowed)", g.Alignment, MaxAlignment)
		}
		if g.TailPad < 0 || g.TailPad > MaxTailPad {
			return bad("GGUF tail padding of %d bytes (0-%d allowed)", g.TailPad, MaxTailPad)
		}
	} else if m.GGUF != nil {
		return bad("safetensors source with GGUF metadata")
	}
	return nil
}

// PlainName reports whether name is a plain file name: valid UTF-8, not
// empty, "." or "..", without a path separator or NUL.
func PlainName(name string) bool {
	return name != "" && name != "." && name != ".." && utf8.ValidString(name) &&
		!strings.ContainsAny(name, `/\`+"\x00")
}

// ErrUnknownFormat is returned by Detect for files that are none of the
// known containers.
var ErrUnknownFormat = errors.New("formats: unknown file format (not safetensors, GGUF or .tpk)")

// Detect reports the container kind of a path from its magic bytes, never
// from its extension, among the registered formats (Format.Magic). A
// directory is a Hugging Face checkout (Safetensors or GGUF, whichever it
// holds: Format.Dir).
func Detect(path string) (Kind, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if !st.IsDir() && !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s: not a regular file or directory (pipes and devices cannot be memory-mapped)", path)
	}
	if st.IsDir() {
		for _, f := range registered(func(a, b *Format) int { return a.DirRank - b.DirRank }) {
			if f.Dir == nil {
				continue
			}
			if ok, err := f.Dir(path); err != nil {
				return "", err
			} else if ok {
				return f.Kind, nil
			}
		}
		return "", fmt.Errorf("%s: %w: directory holds no *.safetensors file (nor exactly one *.gguf)", path, ErrUnknownFormat)
	}
	f, err := inputfile.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	fs := registered(func(a, b *Format) int { return literal(b.Magic) - literal(a.Magic) })
	size := 0
	for _, ft := range fs {
		size = max(size, len(ft.Magic))
	}
	head := make([]byte, size)
	n, _ := io.ReadFull(f, head)
	for _, ft := range fs {
		if ft.Magic != "" && matchMagic(ft.Magic, head[:n]) {
			return ft.Kind, nil
		}
	}
	return "", fmt.Errorf("%s: %w", path, ErrUnknownFormat)
}

// WritePlace writes where a format error was found to b, ahead of its
// detail: "FILE: tensor "NAME": ", leaving out the parts that are empty.
func WritePlace(b *strings.Builder, file, tensor string) {
	if file != "" {
		b.WriteString(file)
		b.WriteString(": ")
	}
	if tensor != "" {
		fmt.Fprintf(b, "tensor %q: ", tensor)
	}
}
