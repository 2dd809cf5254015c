package stream

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	_ "github.com/tpconvert/tpconvert/codec/basic"
	_ "github.com/tpconvert/tpconvert/codec/intq"
	_ "github.com/tpconvert/tpconvert/codec/lossless"
	_ "github.com/tpconvert/tpconvert/codec/tenpakx"
	"github.com/tpconvert/tpconvert/codec/tenpakx2"
	"github.com/tpconvert/tpconvert/codec/tenpakx3"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/formats/safetensors"
	"github.com/tpconvert/tpconvert/formats/tpk"
	"github.com/tpconvert/tpconvert/tensor"
)

// memSource is a Source of float32 tensors held in memory.
type memSource struct {
	infos []tensor.Info
	data  [][]byte
}

func newMemSource(shapes map[string][]int64, names ...string) *memSource {
	s := &memSource{}
	r := rand.New(rand.NewPCG(3, 4))
	var off int64
	for _, n := range names {
		t := tensor.Info{Name: n, DType: tensor.F32, Shape: shapes[n], Offset: off}
		x := make([]float32, t.Elems())
		for k := range x {
			x[k] = float32(r.NormFloat64())
		}
		b := make([]byte, 4*len(x))
		if err := tensor.FromFloat32(b, tensor.F32, x); err != nil {
			panic(err)
		}
		t.Size = int64(len(b))
		off += t.Size
		s.infos, s.data = append(s.infos, t), append(s.data, b)
	}
	return s
}

func (s *memSource) Tensors() []tensor.Info { return s.infos }
func (s *memSource) Bytes(i int) ([]byte, error) {
	return s.data[i], nil
}
func (s *memSource) Release(int) {}
func (s *memSource) Meta() *formats.Meta {
	return &formats.Meta{Kind: formats.Safetensors, Files: []formats.FileMeta{{Name: "m.safetensors"}}}
}
func (s *memSource) Close() error { return nil }

// reservations runs f and returns the reservations the pipeline took.
func reservations(t *testing.T, f func() error) []int64 {
	t.Helper()
	var mu sync.Mutex
	var ws []int64
	reserveHook = func(_ int, w int64) { mu.Lock(); ws = append(ws, w); mu.Unlock() }
	defer func() { reserveHook = nil }()
	if err := f(); err != nil {
		t.Fatal(err)
	}
	return ws
}

// TestChunkedReservations: a tensor larger than the budget is processed
// in several reservations, none above the budget, and the output is the
// same bytes as when it is processed whole, for compress (copy and cast)
// and restore (copy and decode).
func TestChunkedReservations(t *testing.T) {
	const big = "model.layers.0.mlp.up_proj.weight"
	src := newMemSource(map[string][]int64{big: {256, 64}, "norm.weight": {64}}, big, "norm.weight")
	const budget = 16 << 10 // the big tensor is 64 KiB
	sel := func(t tensor.Info) bool { return t.Name == big }
	dir := t.TempDir()
	for _, name := range []string{"none", "f16", "bf16"} {
		c, err := codec.New(name, codec.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var outs [][]byte
		for _, mem := range []int64{64 << 20, budget} {
			for _, workers := range []int{1, 3} {
				var buf bytes.Buffer
				ws := reservations(t, func() error {
					_, err := compressTPK(context.Background(), src, &buf, CompressOptions{
						Options: Options{Workers: workers, MaxMemory: mem, StrictMemory: mem == budget},
						Codec:   c, Select: sel})
					return err
				})
				checkReservations(t, name+" compress", ws, mem, budget, false)
				outs = append(outs, buf.Bytes())
			}
		}
		r := sameOutputs(t, name, outs, dir)
		var rest [][]byte
		for _, dt := range []tensor.DType{tensor.Invalid, tensor.BF16} {
			for _, mem := range []int64{64 << 20, budget} {
				b, ws := restoreReserving(t, r, RestoreOptions{Options: Options{Workers: 2, MaxMemory: mem}, DType: dt})
				checkReservations(t, name+" restore", ws, mem, budget, false)
				rest = append(rest, b)
			}
			if !bytes.Equal(rest[len(rest)-2], rest[len(rest)-1]) {
				t.Errorf("%s: restore to %s in chunks differs from the whole-tensor one", name, dt)
			}
		}
		r.Close()
	}
}

// TestChunkedRestoreRowDecoders: records of codecs that decode rows
// independently (codec.RowDecoder: int8, int4, tenpak_x_v2 in each grid
// and scale format) restore in row chunks within a small budget, to the
// same bytes as whole, for 2-D and 3-D tensors and odd column counts.
func TestChunkedRestoreRowDecoders(t *testing.T) {
	const big = "model.layers.0.mlp.up_proj.weight"
	const budget = 16 << 10 // the big tensor is 64 KiB
	sel := func(t tensor.Info) bool { return t.Name == big }
	int4, err := codec.New("int4", codec.Options{GroupSize: 7})
	if err != nil {
		t.Fatal(err)
	}
	codecs := map[string]codec.Codec{"int4 group 7": int4}
	for _, name := range []string{"int8", "int4"} {
		if codecs[name], err = codec.New(name, codec.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, cfg := range []string{"uniform:4/32", "uniform:3/16s8", "symmetric:8/32", "normal:3/64s8", "f16"} {
		c, err := tenpakx2.ParseConfig(cfg)
		if err != nil {
			t.Fatal(err)
		}
		codecs["tenpak_x_v2 "+cfg] = tenpakx2.NewPlanned(map[string]tenpakx2.Config{big: c}, nil, "")
	}
	dir := t.TempDir()
	for _, shape := range [][]int64{{256, 64}, {64, 4, 64}, {256, 63}} {
		src := newMemSource(map[string][]int64{big: shape, "norm.weight": {64}}, big, "norm.weight")
		for name, c := range codecs {
			if shape[len(shape)-1] == 63 && name == "tenpak_x_v2 normal:3/64s8" {
				continue // the rotation needs a power-of-two block of columns
			}
			var buf bytes.Buffer
			if _, err := compressTPK(context.Background(), src, &buf, CompressOptions{
				Options: Options{Workers: 2}, Codec: c, Select: sel}); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "m.tpk")
			if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			r, err := tpk.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			if id := r.Entries()[0].CodecID; id != c.ID() {
				t.Fatalf("%s %v: stored with codec %d", name, shape, id)
			}
			var rest [][]byte
			for _, mem := range []int64{64 << 20, budget} {
				b, ws := restoreReserving(t, r, RestoreOptions{Options: Options{Workers: 3, MaxMemory: mem}})
				checkReservations(t, fmt.Sprintf("%s %v restore", name, shape), ws, mem, budget, false)
				rest = append(rest, b)
			}
			r.Close()
			if !bytes.Equal(rest[0], rest[1]) {
				t.Errorf("%s %v: restore in chunks differs from the whole-tensor one", name, shape)
			}
		}
	}
}

// restoreReserving restores r with o to a safetensors file and returns
// its bytes and the memory reservations made.
func restoreReserving(t *testing.T, r *tpk.Reader, o RestoreOptions) ([]byte, []int64) {
	t.Helper()
	plan, err := Plan(r, o)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	ws := reservations(t, func() error {
		w, err := safetensors.NewWriter(&buf, plan, nil)
		if err != nil {
			return err
		}
		if err := Restore(context.Background(), r, plan, w, o); err != nil {
			return err
		}
		return w.Close()
	})
	return buf.Bytes(), ws
}

// sameOutputs checks that the compress outputs outs of codec name are
// the same bytes as the first (whole-tensor) one, and opens it, written to
// dir.
func sameOutputs(t *testing.T, name string, outs [][]byte, dir string) *tpk.Reader {
	t.Helper()
	for k := range outs[1:] {
		if !bytes.Equal(outs[0], outs[k+1]) {
			t.Fatalf("%s: compress output %d differs from the whole-tensor one", name, k+1)
		}
	}
	path := filepath.Join(dir, name+".tpk")
	if err := os.WriteFile(path, outs[0], 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := tpk.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// checkReservations checks the reservations ws of processing the big
// tensor (the first) and one more at mem: whole when mem is not budget,
// else in several chunks of at most half of it, or, when held (a
// codec.RowEncoder's payload held from the first reservation on), chunks
// that fit beside the first.
func checkReservations(t *testing.T, what string, ws []int64, mem, budget int64, held bool) {
	t.Helper()
	if mem != budget {
		if len(ws) != 2 {
			t.Errorf("%s with %d bytes: %d reservations, want 2 (whole tensors)", what, mem, len(ws))
		}
		return
	}
	if len(ws) < 5 {
		t.Fatalf("%s within %d bytes: %d reservations, want the tensor in several", what, budget, len(ws))
	}
	for _, w := range ws[1:] {
		if held && ws[0]+w > budget {
			t.Errorf("%s: a chunk of %d bytes beside the payload's %d, more than the %d budget", what, w, ws[0], budget)
		}
	}
	for _, w := range ws {
		if !held && w > budget/2 {
			t.Errorf("%s: a reservation of %d bytes, more than a chunk of the %d budget", what, w, budget)
		}
	}
}

// TestWholeMatrixCodecRefusedBelowItsNeed: tenpak_x_v1 needs the whole
// matrix; an explicit budget below its need is refused before any work,
// naming the tensor and the need, while f16 of the same tensor fits.
func TestWholeMatrixCodecRefusedBelowItsNeed(t *testing.T) {
	const big = "model.layers.0.mlp.up_proj.weight"
	src := newMemSource(map[string][]int64{big: {256, 64}}, big)
	sel := func(t tensor.Info) bool { return true }
	for _, name := range []string{"tenpak_x_v1", "f16"} {
		c, err := codec.New(name, codec.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		_, err = compressTPK(context.Background(), src, &buf, CompressOptions{
			Options: Options{Workers: 1, MaxMemory: 16 << 10, StrictMemory: true}, Codec: c, Select: sel})
		var me *MemoryError
		switch {
		case name == "f16" && err != nil:
			t.Errorf("f16 within 16 KiB: %v", err)
		case name != "f16" && !errors.As(err, &me):
			t.Errorf("%s within 16 KiB: err = %v, want a *MemoryError", name, err)
		case name != "f16" && (me.Tensor != big || me.Need <= me.Budget):
			t.Errorf("%s: %+v", name, me)
		case name != "f16" && buf.Len() != 0:
			t.Errorf("%s: %d bytes written before the refusal", name, buf.Len())
		}
		if err := CheckMemory(src, c, nil, sel, nil, 16<<10); (err == nil) != (name == "f16") {
			t.Errorf("CheckMemory(%s) = %v", name, err)
		}
	}
}

// TestChunkedRestoreChecksum: a damaged payload restored in chunks fails
// with the checksum error.
func TestChunkedRestoreChecksum(t *testing.T) {
	const big = "model.layers.0.mlp.up_proj.weight"
	src := newMemSource(map[string][]int64{big: {256, 64}}, big)
	c, err := codec.New("f16", codec.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := compressTPK(context.Background(), src, &buf, CompressOptions{
		Options: Options{Workers: 1}, Codec: c, Select: func(tensor.Info) bool { return true }}); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	path := filepath.Join(t.TempDir(), "m.tpk")
	for _, at := range []float64{0.1, 0.9} {
		r0, err := tpk.NewReader(bytes.NewReader(b), int64(len(b)), "m.tpk")
		if err != nil {
			t.Fatal(err)
		}
		e := r0.Entries()[0]
		d := bytes.Clone(b)
		d[e.PayloadOffset+int64(at*float64(e.PayloadSize))] ^= 0x40
		if err := os.WriteFile(path, d, 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := tpk.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		o := RestoreOptions{Options: Options{Workers: 2, MaxMemory: 16 << 10}}
		plan, err := Plan(r, o)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		w, err := safetensors.NewWriter(&out, plan, nil)
		if err != nil {
			t.Fatal(err)
		}
		ws := reservations(t, func() error {
			err := Restore(context.Background(), r, plan, w, o)
			if !errors.Is(err, tpk.ErrChecksum) {
				t.Errorf("byte at %.0f%% of the payload damaged: err = %v, want a checksum error", 100*at, err)
			}
			return nil
		})
		if len(ws) < 3 {
			t.Errorf("%d reservations: the record was not restored in chunks", len(ws))
		}
		r.Close()
	}
}

// TestChunkedRowEncoder: a tenpak_x_v2 tensor larger than the budget is
// encoded in several reservations, none above the budget, to the same
// bytes (statistics and fallbacks included) as when it is encoded whole,
// for every grid and scale format, 2-D and 3-D, any number of workers;
// below its need an explicit budget is refused with the least budget
// that encodes it in chunks, and that budget suffices.
func TestChunkedRowEncoder(t *testing.T) {
	const big = "model.layers.0.mlp.up_proj.weight"
	sel := func(t tensor.Info) bool { return t.Name == big }
	for _, tc := range []struct {
		shape  []int64
		budget int64
		poison float32 // put in a late row: the tensor is stored unchanged
	}{
		{[]int64{1024, 64}, 256 << 10, 0},
		{[]int64{1000, 63}, 256 << 10, 0},
		{[]int64{64, 16, 64}, 512 << 10, 0},
		{[]int64{1024, 64}, 256 << 10, 1e6},
		{[]int64{1024, 64}, 256 << 10, float32(math.NaN())},
	} {
		src := newMemSource(map[string][]int64{big: tc.shape, "norm.weight": {64}}, big, "norm.weight")
		if tc.poison != 0 {
			binary.LittleEndian.PutUint32(src.data[0][len(src.data[0])-300:], math.Float32bits(tc.poison))
		}
		for _, cfg := range []string{"uniform:4/32", "uniform:3/16s8", "symmetric:8/32", "normal:3/64s8", "normal:2/32", "f16"} {
			if tc.shape[len(tc.shape)-1] == 63 && strings.HasPrefix(cfg, "normal") {
				continue // the rotation needs a power-of-two block of columns
			}
			c, err := tenpakx2.ParseConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			what := fmt.Sprintf("%s %v poison %v", cfg, tc.shape, tc.poison)
			imp := make([]float32, tc.shape[len(tc.shape)-1])
			for k := range imp {
				imp[k] = float32(1 + k%5)
			}
			x2 := tenpakx2.NewPlanned(map[string]tenpakx2.Config{big: c}, map[string][]float32{big: imp}, "")
			var outs [][]byte
			var notes []string
			for _, mem := range []int64{64 << 20, tc.budget} {
				for _, workers := range []int{1, 3} {
					var buf bytes.Buffer
					var res []Result
					ws := reservations(t, func() error {
						var err error
						res, err = compressTPK(context.Background(), src, &buf, CompressOptions{
							Options: Options{Workers: workers, MaxMemory: mem, StrictMemory: mem == tc.budget},
							Codec:   x2, Select: sel, AllowLarger: true})
						return err
					})
					checkReservations(t, what, ws, mem, tc.budget, true)
					outs, notes = append(outs, buf.Bytes()), append(notes, res[0].Note)
				}
			}
			for k := range outs[1:] {
				if !bytes.Equal(outs[0], outs[k+1]) || notes[0] != notes[k+1] {
					t.Errorf("%s: output %d differs from the whole-tensor one (notes %q, %q)", what, k+1, notes[0], notes[k+1])
				}
			}
			if (tc.poison != 0) != (notes[0] != "") {
				t.Errorf("%s: note %q", what, notes[0])
			}
		}
	}
	// Below the payload and a chunk of 8 rows: refused, naming the need,
	// which is enough.
	src := newMemSource(map[string][]int64{big: {1024, 64}}, big)
	x2 := tenpakx2.NewPlanned(map[string]tenpakx2.Config{big: {Grid: tenpakx2.GridHalf, Bits: 16}}, nil, "")
	o := CompressOptions{Options: Options{Workers: 2, MaxMemory: 96 << 10, StrictMemory: true}, Codec: x2, Select: sel, AllowLarger: true}
	var me *MemoryError
	if _, err := compressTPK(context.Background(), src, io.Discard, o); !errors.As(err, &me) {
		t.Fatalf("f16 grid of a 256 KiB tensor within 96 KiB: err = %v, want a *MemoryError", err)
	}
	if me.Need <= 128<<10 || me.Need > 256<<10 {
		t.Errorf("need %d bytes: want the 128 KiB payload and 8 rows", me.Need)
	}
	o.MaxMemory = me.Need
	ws := reservations(t, func() error { _, err := compressTPK(context.Background(), src, io.Discard, o); return err })
	checkReservations(t, "at the named need", ws, me.Need, me.Need, true)
}

// TestChunkedLossless: tensors larger than the budget stored with the
// lossless codec (--lossless, and the pass-through of a lossy codec) are
// coded in chunks of the codec (codec.ChunkEncoder) in several
// reservations, none above half the budget, and restored so
// (codec.ChunkDecoder): the same bytes as whole, for any worker count, for
// every form (BF16, F32 whose values are all BF16, a 1-D tensor,
// incompressible integers stored unchanged).
func TestChunkedLossless(t *testing.T) {
	src := losslessSource(t)
	const budget = 4 << 20
	dir := t.TempDir()
	for _, name := range []string{"lossless", "f16"} {
		c, err := codec.New(name, codec.Options{})
		if err != nil {
			t.Fatal(err)
		}
		pass, err := codec.New("lossless", codec.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var outs [][]byte
		spillDir := t.TempDir()
		for _, mem := range []int64{64 << 20, budget} {
			for _, workers := range []int{1, 3} {
				// Chunked runs also keep their coded chunks in a spill
				// file, or try to in a directory that does not exist.
				spills := []string{""}
				if mem == budget {
					spills = append(spills, spillDir, filepath.Join(spillDir, "missing"))
				}
				for _, sd := range spills {
					var buf bytes.Buffer
					var res []Result
					ws := reservations(t, func() error {
						var err error
						res, err = compressTPK(context.Background(), src, &buf, CompressOptions{
							Options: Options{Workers: workers, MaxMemory: mem, StrictMemory: mem == budget},
							Codec:   c, PassThrough: pass.(codec.ByteCodec), SpillDir: sd,
							Select: func(t tensor.Info) bool { return t.Name == "model.norm.weight" }})
						return err
					})
					if left, _ := os.ReadDir(spillDir); len(left) != 0 {
						t.Fatalf("%s: %d files left in the spill directory", name, len(left))
					}
					checkLosslessReservations(t, name+" compress", ws, len(src.infos), mem, budget)
					for k, want := range []string{"lossless", "lossless", "none"} {
						if got := res[k].Entry.Codec; got != want {
							t.Errorf("%s: %s stored with %s, want %s", name, src.infos[k].Name, got, want)
						}
					}
					outs = append(outs, buf.Bytes())
				}
			}
		}
		rd := sameOutputs(t, name, outs, dir)
		var rest [][]byte
		for _, dt := range []tensor.DType{tensor.Invalid, tensor.F16} {
			for _, mem := range []int64{64 << 20, budget} {
				b, ws := restoreReserving(t, rd, RestoreOptions{Options: Options{Workers: 2, MaxMemory: mem}, DType: dt})
				checkLosslessReservations(t, fmt.Sprintf("%s restore to %s", name, dt), ws, len(src.infos), mem, budget)
				rest = append(rest, b)
			}
			if !bytes.Equal(rest[len(rest)-2], rest[len(rest)-1]) {
				t.Errorf("%s: restore to %s in chunks differs from the whole-tensor one", name, dt)
			}
		}
		rd.Close()
		for k, want := range src.data[:3] {
			if !bytes.Contains(rest[1], want) {
				t.Errorf("%s: restored file lacks the bytes of %s", name, src.infos[k].Name)
			}
		}
	}
}

// losslessSource returns tensors of several lossless forms, three of
// several chunks (BF16; F32 whose values are all BF16, 1-D;
// incompressible I32) and a small F32 one.
func losslessSource(t *testing.T) *memSource {
	r := rand.New(rand.NewPCG(5, 6))
	src := &memSource{}
	add := func(name string, dt tensor.DType, shape []int64, fill func(b []byte)) {
		ti := tensor.Info{Name: name, DType: dt, Shape: shape}
		ti.Size, _ = tensor.ByteSize(dt, shape)
		for _, p := range src.infos {
			ti.Offset += p.Size
		}
		b := make([]byte, ti.Size)
		fill(b)
		src.infos, src.data = append(src.infos, ti), append(src.data, b)
	}
	normal := func(dt tensor.DType) func(b []byte) {
		return func(b []byte) {
			x := make([]float32, int64(len(b))/dt.BlockBytes())
			for k := range x {
				x[k] = float32(r.NormFloat64()) * 0.02
			}
			if err := tensor.FromFloat32(b, dt, x); err != nil {
				t.Fatal(err)
			}
		}
	}
	add("model.layers.0.mlp.up_proj.weight", tensor.BF16, []int64{643, 512}, normal(tensor.BF16))
	add("model.embed_tokens.weight", tensor.F32, []int64{3*65536 + 5}, func(b []byte) {
		normal(tensor.F32)(b)
		for k := 0; k < len(b); k += 4 {
			b[k], b[k+1] = 0, 0 // every value a BF16
		}
	})
	add("position_ids", tensor.I32, []int64{3, 70001}, func(b []byte) {
		for k := range b {
			b[k] = byte(r.Uint32())
		}
	})
	add("model.norm.weight", tensor.F32, []int64{64}, normal(tensor.F32))
	return src
}

// TestPassThroughSize: the size OverheadWith counts for a tensor stored
// with the pass-through codec, measured chunk by chunk, is that of the
// record passThrough makes of the whole tensor.
func TestPassThroughSize(t *testing.T) {
	src := losslessSource(t)
	pass, err := codec.New("lossless", codec.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pc := pass.(codec.ByteCodec)
	for i, ti := range src.infos {
		v, err := passThrough(pc, ti, src.data[i], rawEntry(ti), "")
		if err != nil {
			t.Fatal(err)
		}
		e := rawEntry(ti)
		var released int64
		n, err := passThroughSize(pc, ti, src.data[i], &e, func(_, n int64) { released += n })
		if err != nil {
			t.Fatal(err)
		}
		if n != int64(len(v.payload)) || e.Codec != v.entry.Codec {
			t.Errorf("%s: measured %d bytes with %s, stored %d with %s", ti.Name, n, e.Codec, len(v.payload), v.entry.Codec)
		}
		if released < ti.Size {
			t.Errorf("%s: released %d of %d bytes", ti.Name, released, ti.Size)
		}
	}
}

// checkLosslessReservations checks the reservations ws of processing n
// tensors at mem: one each when mem is not budget, else several for each
// of at least two of them, none above half the budget.
func checkLosslessReservations(t *testing.T, what string, ws []int64, n int, mem, budget int64) {
	t.Helper()
	if mem != budget {
		if len(ws) != n {
			t.Errorf("%s with %d bytes: %d reservations, want %d (whole tensors)", what, mem, len(ws), n)
		}
		return
	}
	if len(ws) < n+2*3 {
		t.Errorf("%s within %d bytes: %d reservations, want the large tensors in several each", what, budget, len(ws))
	}
	for _, w := range ws {
		if w > budget/2 {
			t.Errorf("%s: a reservation of %d bytes, more than a chunk of the %d budget", what, w, budget)
		}
	}
}

// TestTransposedNeedIsWhole: a tensor stored [in, out] (GPT-2 Conv1D) is
// encoded whole and transposed; CheckMemory, before any work, names the
// same need as Compress's own check, the transposed copy included, and
// that need is enough.
func TestTransposedNeedIsWhole(t *testing.T) {
	const conv = "h.0.mlp.c_fc.weight"
	src := newMemSource(map[string][]int64{conv: {256, 64}}, conv)
	c, err := codec.New("f16", codec.Options{})
	if err != nil {
		t.Fatal(err)
	}
	all := func(tensor.Info) bool { return true }
	tr := func(t tensor.Info) bool { return t.Name == conv }
	const budget = 16 << 10
	if err := CheckMemory(src, c, nil, all, nil, budget); err != nil {
		t.Fatalf("not transposed, in row chunks: %v", err)
	}
	var me *MemoryError
	if err := CheckMemory(src, c, nil, all, tr, budget); !errors.As(err, &me) {
		t.Fatalf("transposed: CheckMemory = %v, want a *MemoryError", err)
	}
	// Its source, input, transposed input and decoded values at least.
	if n := src.infos[0].Elems(); me.Need < src.infos[0].Size+12*n || me.Tensor != conv ||
		me.Need-compressCost(c, nil, src.infos[0], true, false) != 4*n {
		t.Errorf("CheckMemory: %+v, want the whole tensor's need with its transposed copy", me)
	}
	compress := func(mem int64) error {
		var buf bytes.Buffer
		_, err := compressTPK(context.Background(), src, &buf, CompressOptions{
			Options: Options{Workers: 1, MaxMemory: mem, StrictMemory: true}, Codec: c, Select: all, Transpose: tr})
		return err
	}
	var me2 *MemoryError
	if err := compress(budget); !errors.As(err, &me2) || me2.Need != me.Need {
		t.Errorf("Compress within %d bytes: %v, want the need %d", budget, err, me.Need)
	}
	if err := compress(me.Need); err != nil {
		t.Errorf("Compress within the need %d: %v", me.Need, err)
	}
}

// TestChunkedRestoreDir: records restored into a sharded checkout
// (safetensors.DirWriter, a formats.PartSink) are written in row chunks
// and codec chunks as into one file, to the same files as whole.
func TestChunkedRestoreDir(t *testing.T) {
	src := losslessSource(t)
	c, err := codec.New("lossless", codec.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := compressTPK(context.Background(), src, &buf, CompressOptions{Options: Options{Workers: 2}, Codec: c}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "m.tpk")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := tpk.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const budget = 2 << 20
	var trees []map[string][]byte
	for _, mem := range []int64{64 << 20, budget} {
		o := RestoreOptions{Options: Options{Workers: 3, MaxMemory: mem}}
		plan, err := Plan(r, o)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, fmt.Sprint(mem))
		ws := reservations(t, func() error {
			w, err := safetensors.NewDirWriter(out, r.Meta(), plan, safetensors.DirOptions{ShardSize: 400 << 10})
			if err != nil {
				return err
			}
			defer w.Abort()
			if err := Restore(context.Background(), r, plan, w, o); err != nil {
				return err
			}
			return w.Close()
		})
		checkLosslessReservations(t, "restore into a checkout", ws, len(plan), mem, budget)
		files, err := os.ReadDir(out)
		if err != nil {
			t.Fatal(err)
		}
		tree := map[string][]byte{}
		for _, f := range files {
			if tree[f.Name()], err = os.ReadFile(filepath.Join(out, f.Name())); err != nil {
				t.Fatal(err)
			}
		}
		if len(tree) < 3 {
			t.Fatalf("%d files in the checkout, want several shards and the index", len(tree))
		}
		trees = append(trees, tree)
	}
	for name, b := range trees[0] {
		if !bytes.Equal(b, trees[1][name]) {
			t.Errorf("%s: restored in chunks differs from whole", name)
		}
	}
}

// partsOnly is a lossless pass-through codec without Append that counts
// the tensors it codes whole (EncodeBytes).
type partsOnly struct {
	codec.ChunkEncoder
	mu    sync.Mutex
	whole int
}

func (p *partsOnly) EncodeBytes(w io.Writer, t tensor.Info, src []byte) error {
	p.mu.Lock()
	p.whole++
	p.mu.Unlock()
	return p.ChunkEncoder.EncodeBytes(w, t, src)
}

// TestChunkedFallbackInParts: a tensor processed in chunks that its codec
// cannot represent (a NaN in a late row) and that goes to the lossless
// pass-through is coded in parts, never whole, to the same bytes and note
// as when it is processed whole: after a chunked cast's first pass, and
// after the last chunk of a codec.RowEncoder.
func TestChunkedFallbackInParts(t *testing.T) {
	const big = "model.layers.0.mlp.up_proj.weight"
	src := newMemSource(map[string][]int64{big: {256, 1024}}, big)
	binary.LittleEndian.PutUint32(src.data[0][4*(200*1024+7):], math.Float32bits(float32(math.NaN())))
	ll, err := codec.New("lossless", codec.Options{})
	if err != nil {
		t.Fatal(err)
	}
	const budget = 2 << 20
	for _, name := range []string{"f16", "tenpak_x_v2"} {
		c, err := codec.New(name, codec.Options{})
		if err != nil {
			t.Fatal(err)
		}
		var outs [][]byte
		var notes []string
		for _, mem := range []int64{64 << 20, budget} {
			pass := &partsOnly{ChunkEncoder: ll.(codec.ChunkEncoder)}
			var buf bytes.Buffer
			var res []Result
			ws := reservations(t, func() error {
				var err error
				res, err = compressTPK(context.Background(), src, &buf, CompressOptions{
					Options: Options{Workers: 2, MaxMemory: mem}, Codec: c, PassThrough: pass,
					Select: func(tensor.Info) bool { return true }})
				return err
			})
			if res[0].Entry.Codec != "lossless" || !strings.Contains(res[0].Note, "stored with lossless") {
				t.Fatalf("%s at %d: stored with %s, note %q", name, mem, res[0].Entry.Codec, res[0].Note)
			}
			if chunked := len(ws) > 1; chunked != (mem == budget) || pass.whole != map[bool]int{false: 1, true: 0}[chunked] {
				t.Errorf("%s at %d: %d reservations, %d tensors coded whole", name, mem, len(ws), pass.whole)
			}
			outs, notes = append(outs, buf.Bytes()), append(notes, res[0].Note)
		}
		if !bytes.Equal(outs[0], outs[1]) || notes[0] != notes[1] {
			t.Errorf("%s: the fallback in parts differs from the whole one (notes %q, %q)", name, notes[0], notes[1])
		}
	}
}

// TestStreamedEncoder: a tensor larger than the budget coded by
// tenpak_x_v3 (codec.StreamEncoder) is encoded from windows of its rows
// in one reservation within half the budget, with its coded groups in a
// spill file, in none, or in a directory that does not exist, to the same
// bytes, notes and statistics as when it is encoded whole, for any worker
// count; values the codec refuses or cannot represent faithfully, in a
// late row, store it unchanged with the whole encoding's note.
func TestStreamedEncoder(t *testing.T) {
	old := tenpakx3.GroupWeights
	tenpakx3.GroupWeights = 1 << 14
	defer func() { tenpakx3.GroupWeights = old }()
	const big = "model.layers.0.mlp.up_proj.weight"
	const budget = 24 << 20 // the big tensor is 8 MiB of F32
	sel := func(t tensor.Info) bool { return t.Name == big }
	spillDir := t.TempDir()
	nan := float32(math.NaN())
	for _, poison := range [][2]float32{{0, 0}, {3e38, 0}, {nan, 0}, {3e38, nan}} {
		src := newMemSource(map[string][]int64{big: {8192, 256}, "norm.weight": {256}}, big, "norm.weight")
		// Rows 5000 and 7000: in different windows.
		for k, v := range poison {
			if v != 0 {
				binary.LittleEndian.PutUint32(src.data[0][(5000+2000*k)*256*4+40:], math.Float32bits(v))
			}
		}
		var outs [][]byte
		var notes []string
		for _, mem := range []int64{1 << 30, budget} {
			for _, workers := range []int{1, 3} {
				spills := []string{""}
				if mem == budget {
					spills = append(spills, spillDir, filepath.Join(spillDir, "missing"))
				}
				for _, sd := range spills {
					x3, err := tenpakx3.NewFixed(tenpakx3.Config{K: 20})
					if err != nil {
						t.Fatal(err)
					}
					var buf bytes.Buffer
					var res []Result
					ws := reservations(t, func() error {
						var err error
						res, err = compressTPK(context.Background(), src, &buf, CompressOptions{
							Options: Options{Workers: workers, MaxMemory: mem, StrictMemory: mem == budget},
							Codec:   x3, Select: sel, SpillDir: sd})
						return err
					})
					if left, _ := os.ReadDir(spillDir); len(left) != 0 {
						t.Fatalf("poison %v: %d files left in the spill directory", poison, len(left))
					}
					if len(ws) != 2 {
						t.Fatalf("poison %v, %d bytes: %d reservations, want 2", poison, mem, len(ws))
					}
					if mem == budget && ws[0] > budget/2 {
						t.Errorf("poison %v: a reservation of %d bytes, more than half the %d budget", poison, ws[0], budget)
					}
					if mem != budget && ws[0] <= budget {
						t.Errorf("poison %v: %d bytes reserved with the large budget: not encoded whole", poison, ws[0])
					}
					outs, notes = append(outs, buf.Bytes()), append(notes, res[0].Note)
				}
			}
		}
		for k := range outs[1:] {
			if !bytes.Equal(outs[0], outs[k+1]) || notes[0] != notes[k+1] {
				t.Errorf("poison %v: output %d differs from the whole-tensor one (notes %q, %q)", poison, k+1, notes[0], notes[k+1])
			}
		}
		if (poison[0] != 0) != (notes[0] != "") || poison[1] != 0 && !strings.Contains(notes[0], "NaN") {
			t.Errorf("poison %v: note %q", poison, notes[0])
		}
	}
}
