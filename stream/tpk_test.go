package stream

import (
	"context"
	"io"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/formats/tpk"
)

// compressTPK is Compress into a .tpk file written to w.
func compressTPK(ctx context.Context, src formats.Source, w io.Writer, o CompressOptions) ([]Result, error) {
	tw, err := tpk.NewWriter(CancelWriter(ctx, w), src.Meta())
	if err != nil {
		return nil, err
	}
	res, err := Compress(ctx, src, tw, o)
	if err != nil {
		return nil, err
	}
	return res, tw.Close()
}
