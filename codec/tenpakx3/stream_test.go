package tenpakx3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/codec/numtest"
	"github.com/tpconvert/tpconvert/tensor"
)

// memRows is a codec.RowSource over values in memory that counts the
// rows it gives.
type memRows struct {
	x    []float32
	cols int64
	read atomic.Int64
}

func (m *memRows) Rows(dst []float32, r0, r1 int64) error {
	if int64(len(dst)) != (r1-r0)*m.cols || r1*m.cols > int64(len(m.x)) {
		return fmt.Errorf("rows [%d, %d) into %d values", r0, r1, len(dst))
	}
	copy(dst, m.x[r0*m.cols:r1*m.cols])
	m.read.Add(r1 - r0)
	return nil
}

// TestEncodeStreamMatchesEncode: a payload coded from windows of rows,
// with its groups kept in a spill, in no spill, or in one that fails, is
// the same bytes as Encode's, whatever the window, including codings
// coarsened to fit a cap (several passes) and column importance; its
// chunks decode to Decode's values.
func TestEncodeStreamMatchesEncode(t *testing.T) {
	withGroups(1000, func() {
		for _, sh := range [][2]int{{203, 97}, {64, 256}, {5, 3000}} {
			rows, cols := sh[0], sh[1]
			x := numtest.Realistic().Matrix(numtest.NewRand(uint64(rows)), rows, cols)
			info := numtest.Info("w", rows, cols)
			imp := make([]float32, cols)
			for i := range imp {
				imp[i] = float32(1 + i%7)
			}
			var natural bytes.Buffer
			if err := fixed(t, 20).Encode(&natural, info, x); err != nil {
				t.Fatal(err)
			}
			codecs := map[string]func() *Codec{
				"fixed k=20": func() *Codec { return fixed(t, 20) },
				"capped, importance": func() *Codec {
					return NewPlanned(map[string]Config{"w": {K: 20}}, map[string][]float32{"w": imp}, map[string]int64{"w": int64(natural.Len()) * 8 / 10}, "")
				},
			}
			for name, mk := range codecs {
				var want bytes.Buffer
				c := mk()
				if err := c.Encode(&want, info, x); err != nil {
					t.Fatal(err)
				}
				dec := make([]float32, len(x))
				if err := c.Decode(dec, want.Bytes(), info, Version); err != nil {
					t.Fatal(err)
				}
				for _, win := range []int64{1, 7, 40, int64(rows)} {
					for _, sk := range []string{"none", "works", "write fails", "read fails"} {
						label := fmt.Sprintf("%dx%d %s, window %d, spill %s", rows, cols, name, win, sk)
						var spill *numtest.Spill
						var sp codec.Spill
						if sk != "none" {
							spill = &numtest.Spill{FailWrite: sk == "write fails", FailRead: sk == "read fails"}
							sp = spill
						}
						src := &memRows{x: x, cols: int64(cols)}
						sc := mk()
						var done atomic.Int64
						ch, err := sc.EncodeStream(context.Background(), info, src, win, sp, func(n int64) { done.Add(n) })
						if err != nil {
							t.Fatalf("%s: %v", label, err)
						}
						if sc.TensorParams(info) != c.TensorParams(info) {
							t.Errorf("%s: params %q, Encode's %q", label, sc.TensorParams(info), c.TensorParams(info))
						}
						if done.Load() != int64(len(x)) {
							t.Errorf("%s: progress of %d elements, want %d", label, done.Load(), len(x))
						}
						afterEncode := src.read.Load()
						var got []byte
						for k := 0; k < ch.Len(); k += 3 {
							if got, err = ch.AppendChunks(got, k, min(k+3, ch.Len())); err != nil {
								t.Fatalf("%s: %v", label, err)
							}
						}
						if ch.Size() != int64(len(got)) || !bytes.Equal(got, want.Bytes()) {
							t.Fatalf("%s: %d bytes (size %d), Encode's %d, equal %v", label, len(got), ch.Size(), want.Len(), bytes.Equal(got, want.Bytes()))
						}
						// With a working spill nothing is coded again.
						if again := src.read.Load() - afterEncode; (sk == "works") != (again == 0) {
							t.Errorf("%s: %d rows read again to write the chunks", label, again)
						}
						y := make([]float32, len(x))
						for k := 0; k < ch.Len(); k += 2 {
							k1 := min(k+2, ch.Len())
							r0, _ := ch.ChunkRows(k)
							_, r1 := ch.ChunkRows(k1 - 1)
							if err := ch.DecodeChunks(y[r0*int64(cols):r1*int64(cols)], k, k1); err != nil {
								t.Fatalf("%s: %v", label, err)
							}
						}
						if !slicesEqual(y, dec) {
							t.Errorf("%s: decoded chunks differ from Decode", label)
						}
					}
				}
			}
		}
	})
}

// TestEncodeStreamRefuses: values Encode refuses are refused with the
// same error, naming the element by its index in the whole tensor, and a
// cancelled context stops the passes.
func TestEncodeStreamRefuses(t *testing.T) {
	withGroups(1000, func() {
		rows, cols := 50, 64
		x := numtest.Realistic().Matrix(numtest.NewRand(4), rows, cols)
		x[37*cols+5] = 3e38
		info := numtest.Info("w", rows, cols)
		want := fixed(t, 20).Encode(&bytes.Buffer{}, info, x)
		_, err := fixed(t, 20).EncodeStream(context.Background(), info, &memRows{x: x, cols: int64(cols)}, 16, nil, nil)
		if !errors.Is(err, codec.ErrUnsupported) || want == nil || err.Error() != want.Error() || !strings.Contains(err.Error(), fmt.Sprint(37*cols+5)) {
			t.Errorf("EncodeStream: %v; Encode: %v", err, want)
		}
		x[37*cols+5] = 0
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := fixed(t, 20).EncodeStream(ctx, info, &memRows{x: x, cols: int64(cols)}, 16, nil, nil); !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled: %v", err)
		}
		// A source that fails fails the coding.
		bad := tensor.Info{Name: "w", DType: tensor.F32, Shape: []int64{int64(rows), int64(cols)}}
		if _, err := fixed(t, 20).EncodeStream(context.Background(), bad, &memRows{x: x[:len(x)-cols], cols: int64(cols)}, 16, nil, nil); err == nil {
			t.Error("a source short of a row: no error")
		}
	})
}
