package tpk

import (
	"io"

	"github.com/tpconvert/tpconvert/formats"
)

func init() {
	formats.Register(formats.Format{
		Kind:  formats.TPK,
		Ext:   ".tpk",
		Magic: string(magic[:]),
		OpenRecords: func(path string) (formats.RecordSource, error) {
			r, err := Open(path)
			if err != nil {
				return nil, err
			}
			return r, nil
		},
		NewRecordSink: func(w io.Writer, src *formats.Meta) (formats.RecordSink, error) {
			tw, err := NewWriter(w, src)
			if err != nil {
				return nil, err
			}
			return tw, nil
		},
	})
}
