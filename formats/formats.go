// Package formats defines the seams between checkpoint containers and the
// conversion pipeline: a Source hands out tensors of an input file read in
// place (memory-mapped), a Sink writes tensors in a fixed, announced order.
// One package per container implements them: formats/safetensors,
// formats/gguf and formats/tpk.
package formats

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

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
}

// ErrUnknownFormat is returned by Detect for files that are none of the
// known containers.
var ErrUnknownFormat = errors.New("formats: unknown file format (not safetensors, GGUF or .tpk)")

// Magic numbers used by Detect.
var (
	ggufMagic = []byte("GGUF")
	tpkMagic  = []byte("\x89TPK\r\n\x1a\n")
)

// Detect reports the container kind of a path from its magic bytes, never
// from its extension. A directory is a Hugging Face checkout (Safetensors or
// GGUF, whichever it holds).
func Detect(path string) (Kind, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if !st.IsDir() && !st.Mode().IsRegular() {
		return "", fmt.Errorf("%s: not a regular file or directory (pipes and devices cannot be memory-mapped)", path)
	}
	if st.IsDir() {
		st, err := inputfile.List(path, ".safetensors")
		if err != nil {
			return "", err
		}
		if len(st) > 0 {
			return Safetensors, nil
		}
		gg, err := inputfile.List(path, ".gguf")
		if err != nil {
			return "", err
		}
		if len(gg) == 1 {
			return GGUF, nil
		}
		return "", fmt.Errorf("%s: %w: directory holds no *.safetensors file (nor exactly one *.gguf)", path, ErrUnknownFormat)
	}
	f, err := inputfile.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var head [16]byte
	n, _ := io.ReadFull(f, head[:])
	b := head[:n]
	switch {
	case bytes.HasPrefix(b, tpkMagic):
		return TPK, nil
	case bytes.HasPrefix(b, ggufMagic):
		return GGUF, nil
	case n >= 9 && b[8] == '{':
		// safetensors: u64 little-endian header length, then a JSON object.
		return Safetensors, nil
	}
	return "", fmt.Errorf("%s: %w", path, ErrUnknownFormat)
}
