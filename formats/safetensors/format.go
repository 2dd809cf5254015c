package safetensors

import (
	"io"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/internal/inputfile"
	"github.com/tpconvert/tpconvert/tensor"
)

func init() {
	formats.Register(formats.Format{
		Kind: formats.Safetensors,
		Ext:  ".safetensors",
		// A u64 little-endian header length, then the header's JSON object.
		Magic: "????????{",
		// A checkout directory holds one or more *.safetensors files (a
		// directory that also holds a .gguf file is a safetensors one).
		Dir: func(dir string) (bool, error) {
			files, err := inputfile.List(dir, ".safetensors")
			return len(files) > 0, err
		},
		DirRank: 1,
		Open: func(path string) (formats.Source, error) {
			r, err := Open(path)
			if err != nil {
				return nil, err
			}
			return r, nil
		},
		NewSink: func(w io.Writer, src *formats.Meta, plan []tensor.Info) (formats.Sink, error) {
			// A safetensors source's header and metadata are kept; a
			// file restored from another container gets a new header.
			var fm *formats.FileMeta
			if src.Kind == formats.Safetensors {
				fm = &src.Files[0]
			}
			sw, err := NewWriter(w, plan, fm)
			if err != nil {
				return nil, err
			}
			return sw, nil
		},
		NewDirSink: func(dir string, src *formats.Meta, plan []tensor.Info, o formats.DirOptions) (formats.DirSink, error) {
			dw, err := NewDirWriter(dir, src, plan, o)
			if err != nil {
				return nil, err
			}
			return dw, nil
		},
		CheckDir: CheckDir,
	})
}
