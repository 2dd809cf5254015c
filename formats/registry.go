package formats

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"

	"github.com/tpconvert/tpconvert/tensor"
)

// Format is a container format as registered with Register: how its files
// are recognised, opened and written, in the manner of
// image.RegisterFormat. A format leaves nil what it does not do: .tpk
// files are record containers (OpenRecords, NewRecordSink), the
// checkpoint formats are read as a Source and written as a Sink.
type Format struct {
	Kind Kind
	// Ext is the extension of the format's file names, in lower case
	// (".gguf"). A restore whose output name has it, in any case, writes
	// this format (KindOfName).
	Ext string
	// Magic is the files' leading bytes; '?' matches any byte. Detect
	// tries the formats whose magic has the most bytes other than '?'
	// first, so a GGUF file is never taken for safetensors, whose magic
	// is only its header's opening brace.
	Magic string
	// Dir, if set, reports whether a directory is a checkout of this
	// format. DirRank orders the Dir tests: the lowest rank that matches
	// names the directory's kind.
	Dir     func(dir string) (bool, error)
	DirRank int

	// Open opens a file, or a checkout directory, as a Source.
	Open func(path string) (Source, error)
	// NewSink creates a Sink that writes one file of this format to w:
	// the tensors of plan, in plan's order, restored from a source of
	// metadata src (of this kind or another).
	NewSink func(w io.Writer, src *Meta, plan []tensor.Info) (Sink, error)
	// NewDirSink creates a DirSink that writes a checkout directory dir;
	// CheckDir makes the checks NewDirSink makes without writing.
	NewDirSink func(dir string, src *Meta, plan []tensor.Info, o DirOptions) (DirSink, error)
	CheckDir   func(src *Meta, plan []tensor.Info) error

	// OpenRecords opens a record container file.
	OpenRecords func(path string) (RecordSource, error)
	// NewRecordSink creates a RecordSink that writes a record container
	// to w for a source of metadata src.
	NewRecordSink func(w io.Writer, src *Meta) (RecordSink, error)
}

// DirSink writes a checkout directory. Close puts every file in place at
// once; Abort, after an error, removes what was written.
type DirSink interface {
	Sink
	Abort()
}

// DirOptions configure a DirSink.
type DirOptions struct {
	// ShardSize, when positive, replaces the original sharding: tensors are
	// packed greedily in data order into shards of at most ShardSize tensor
	// bytes (a larger tensor gets a shard of its own), named
	// model-00001-of-0000N.safetensors, with a model.safetensors.index.json,
	// as transformers' save_pretrained does; a single shard is written as
	// model.safetensors without an index. Zero (the default) keeps the
	// files of meta.
	ShardSize int64
	// Overwrite allows replacing existing files (default: refuse).
	Overwrite bool
}

var (
	registryMu sync.RWMutex
	registry   = map[Kind]*Format{}
)

// Register makes a format known to Detect, Lookup and KindOfName. It is
// called from the init function of the format's package; registering a
// kind twice panics.
func Register(f Format) {
	registryMu.Lock()
	defer registryMu.Unlock()
	if f.Kind == "" {
		panic("formats: Register of a format without a kind")
	}
	if _, dup := registry[f.Kind]; dup {
		panic("formats: Register called twice for " + string(f.Kind))
	}
	registry[f.Kind] = &f
}

// Lookup returns the registered format of kind k.
func Lookup(k Kind) (*Format, error) {
	registryMu.RLock()
	defer registryMu.RUnlock()
	if f, ok := registry[k]; ok {
		return f, nil
	}
	return nil, fmt.Errorf("%w: no %q format registered", ErrUnknownFormat, k)
}

// registered returns the registered formats, sorted by less (then by kind).
func registered(less func(a, b *Format) int) []*Format {
	registryMu.RLock()
	fs := make([]*Format, 0, len(registry))
	for _, f := range registry {
		fs = append(fs, f)
	}
	registryMu.RUnlock()
	slices.SortFunc(fs, func(a, b *Format) int {
		if c := less(a, b); c != 0 {
			return c
		}
		return strings.Compare(string(a.Kind), string(b.Kind))
	})
	return fs
}

// literal counts the bytes of a magic other than '?'.
func literal(magic string) int { return len(magic) - strings.Count(magic, "?") }

// matchMagic reports whether b starts with magic ('?' matching any byte).
func matchMagic(magic string, b []byte) bool {
	if len(b) < len(magic) {
		return false
	}
	for i := 0; i < len(magic); i++ {
		if magic[i] != '?' && magic[i] != b[i] {
			return false
		}
	}
	return true
}
