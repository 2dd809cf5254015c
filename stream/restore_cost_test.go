package stream

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"sync/atomic"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/tensor"
)

// countingID names a codec defined for TestRestoreBuildsCodecsPerRecord:
// values stored as IEEE binary16, and a count of the codecs its
// factory has built.
const countingID uint16 = 0xfff3

var countingBuilt atomic.Int64

func init() {
	codec.Register(countingID, "test_counting", "test codec: binary16 values, counts its constructions", func(o codec.Options) (codec.Codec, error) {
		countingBuilt.Add(1)
		return countingCodec{}, nil
	})
}

type countingCodec struct{}

func (countingCodec) ID() uint16                    { return countingID }
func (countingCodec) Name() string                  { return "test_counting" }
func (countingCodec) Version() uint16               { return 1 }
func (countingCodec) Params() string                { return "" }
func (countingCodec) Cost(tensor.Info) int64        { return 0 }
func (countingCodec) MaxRelErr(tensor.Info) float64 { return 1 }
func (countingCodec) Encode(w io.Writer, t tensor.Info, x []float32) error {
	b := make([]byte, 2*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint16(b[2*i:], tensor.FloatToHalf(v))
	}
	_, err := w.Write(b)
	return err
}
func (countingCodec) Decode(dst []float32, p []byte, t tensor.Info, version uint16) error {
	if len(p) != 2*len(dst) {
		return fmt.Errorf("%w: %d bytes for %d values", codec.ErrCorrupt, len(p), len(dst))
	}
	for i := range dst {
		dst[i] = tensor.HalfToFloat(binary.LittleEndian.Uint16(p[2*i:]))
	}
	return nil
}

// TestRestoreBuildsCodecsPerRecord: restoring a lossy record builds its
// codec a few times per record, not once per element (which made every
// lossy restore run at a few MiB/s).
func TestRestoreBuildsCodecsPerRecord(t *testing.T) {
	const big = "model.layers.0.mlp.up_proj.weight"
	src := newMemSource(map[string][]int64{big: {256, 64}, "lm_head.weight": {32, 64}}, big, "lm_head.weight")
	c, err := codec.New("test_counting", codec.Options{})
	if err != nil {
		t.Fatal(err)
	}
	mem := &memRecords{meta: src.Meta()}
	o := CompressOptions{Options: Options{Workers: 2}, Codec: c, Select: func(tensor.Info) bool { return true }}
	if _, err := Compress(context.Background(), src, mem, o); err != nil {
		t.Fatal(err)
	}
	for _, r := range mem.recs {
		if r.CodecID != countingID {
			t.Fatalf("record %s stored with codec %d, want the test codec", r.Name, r.CodecID)
		}
	}
	for _, maxMem := range []int64{0, 16 << 10} { // whole, and in row chunks
		ro := RestoreOptions{Options: Options{Workers: 2, MaxMemory: maxMem}}
		plan, err := Plan(mem, ro)
		if err != nil {
			t.Fatal(err)
		}
		countingBuilt.Store(0)
		sink := &memSink{got: map[string][]byte{}}
		if err := Restore(context.Background(), mem, plan, sink, ro); err != nil {
			t.Fatal(err)
		}
		if n := countingBuilt.Load(); n > 8*int64(len(mem.recs)) {
			t.Errorf("max memory %d: restoring %d records (%d elements) built the codec %d times", maxMem, len(mem.recs), 256*64+32*64, n)
		}
		if len(sink.got[big]) != len(src.data[0]) {
			t.Errorf("max memory %d: %s restored to %d bytes, want %d", maxMem, big, len(sink.got[big]), len(src.data[0]))
		}
	}
}
