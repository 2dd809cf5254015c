package gguf

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/internal/inputfile"
	"github.com/tpconvert/tpconvert/tensor"
)

func init() {
	formats.Register(formats.Format{
		Kind:  formats.GGUF,
		Ext:   ".gguf",
		Magic: "GGUF",
		// A checkout directory holds exactly one *.gguf file.
		Dir: func(dir string) (bool, error) {
			files, err := inputfile.List(dir, ".gguf")
			return len(files) == 1, err
		},
		DirRank: 2,
		Open:    openPath,
		NewSink: func(w io.Writer, src *formats.Meta, plan []tensor.Info) (formats.Sink, error) {
			if src.GGUF == nil {
				return nil, errors.New("gguf: NewWriter: the source has no GGUF metadata")
			}
			gw, err := NewWriter(w, src.GGUF, src.GGUF.InfoOrder, plan)
			if err != nil {
				return nil, err
			}
			return gw, nil
		},
	})
}

// openPath opens a GGUF file, or the one *.gguf file of a directory.
func openPath(path string) (formats.Source, error) {
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
	r, err := Open(path)
	if err != nil {
		return nil, err
	}
	return r, nil
}
