package lossless

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/codec/numtest"
	"github.com/tpconvert/tpconvert/tensor"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func info(d tensor.DType, shape ...int64) tensor.Info {
	t := tensor.Info{Name: "t", DType: d, Shape: shape}
	t.Size, _ = tensor.ByteSize(d, shape)
	return t
}

// weights returns n realistic weights in dtype d, as source bytes.
func weights(t testing.TB, d tensor.DType, n int, seed uint64) []byte {
	t.Helper()
	x := numtest.Realistic().Matrix(numtest.NewRand(seed), 1, n)
	b := make([]byte, int64(n)*d.BlockBytes())
	if err := tensor.FromFloat32(b, d, x); err != nil {
		t.Fatal(err)
	}
	return b
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func encode(t testing.TB, c *Codec, ti tensor.Info, src []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := c.EncodeBytes(&buf, ti, src); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func roundTrip(t *testing.T, ti tensor.Info, src []byte, wantForm int) []byte {
	t.Helper()
	c := &Codec{}
	p := encode(t, c, ti, src)
	if len(p) < headerSize {
		t.Fatalf("%s: payload of %d bytes", ti.DType, len(p))
	}
	if int(p[1]) != wantForm {
		t.Errorf("%s %v: form %d, want %d", ti.DType, ti.Shape, p[1], wantForm)
	}
	got, err := c.DecodeBytes(p, ti, 1)
	if err != nil {
		t.Fatalf("%s %v: %v", ti.DType, ti.Shape, err)
	}
	if !bytes.Equal(got, src) {
		t.Fatalf("%s %v: restored bytes differ", ti.DType, ti.Shape)
	}
	return p
}

type formCase struct {
	ti   tensor.Info
	src  []byte
	form int
}

// formCases returns a tensor of every form, of several chunks with a
// short last one, and small and empty ones.
func formCases(t *testing.T) []formCase {
	n := 3*FloatChunk + 123 // several chunks, a short last one
	bf := weights(t, tensor.BF16, n, 1)
	f32 := weights(t, tensor.F32, n, 2)
	// F32 values that are all BF16 (an upcast checkpoint) and all F16.
	asBF := make([]byte, 4*n)
	asF16 := make([]byte, 4*n)
	h := weights(t, tensor.F16, n, 3)
	for i := range n {
		binary.LittleEndian.PutUint32(asBF[4*i:], uint32(binary.LittleEndian.Uint16(bf[2*i:]))<<16)
		binary.LittleEndian.PutUint32(asF16[4*i:], widen[binary.LittleEndian.Uint16(h[2*i:])])
	}
	f64 := make([]byte, 8*n)
	for i := range n {
		v := float64(math.Float32frombits(binary.LittleEndian.Uint32(f32[4*i:]))) * (1 + 1e-9)
		binary.LittleEndian.PutUint64(f64[8*i:], math.Float64bits(v))
	}
	return []formCase{
		{info(tensor.BF16, int64(n)), bf, FormBF16},
		{info(tensor.F16, 3, int64(n/3)), h[:2*(n/3)*3], FormF16},
		{info(tensor.F32, int64(n)), f32, FormF32},
		{info(tensor.F32, int64(n)), asBF, FormF32AsB16},
		{info(tensor.F32, int64(n)), asF16, FormF32AsF16},
		{info(tensor.F64, int64(n)), f64, FormF64},
		{info(tensor.I32, int64(n)), randomBytes(4*n, 1), FormBytes},
		{info(tensor.I64, 1000), make([]byte, 8000), FormBytes},
		{info(tensor.Bool, 5), []byte{0, 1, 1, 0, 1}, FormBytes},
		{info(tensor.Q8_0, 2, 64), randomBytes(2*2*34, 5), FormBytes},
		{info(tensor.BF16), []byte{0x80, 0x3f}, FormBF16},                                         // scalar
		{info(tensor.BF16, 0, 7), nil, FormBF16},                                                  // empty
		{info(tensor.F32, 4096), make([]byte, 4*4096), FormF32AsB16},                              // zeros
		{info(tensor.BF16, 7), randomBytes(14, 9), FormBF16},                                      // NaN and Inf patterns included
		{info(tensor.F32, 3), []byte{1, 0, 0xc0, 0x7f, 0, 0, 0x80, 0x7f, 0, 0, 0, 0x80}, FormF32}, // NaN with payload, +Inf, -0
		{info(tensor.U8, 2*BytesChunk+2), bytes.Repeat([]byte{3, 1, 4, 1, 5}, (2*BytesChunk+2)/5), FormBytes},
		{info(tensor.BF16, 3*FloatChunk), make([]byte, 6*FloatChunk), FormBF16}, // padded to the minimum length
	}
}

func TestRoundTrip(t *testing.T) {
	for _, c := range formCases(t) {
		roundTrip(t, c.ti, c.src, c.form)
	}
}

// TestChunksMatchWhole codes and decodes every form in parts, in
// partitions of the chunks of several sizes, concurrently, and checks
// that the parts are the bytes of the whole payload and of the source.
func TestChunksMatchWhole(t *testing.T) {
	c := &Codec{}
	for _, fc := range formCases(t) {
		cb := c.ChunkBytes(fc.ti)
		if fc.ti.Size == 0 {
			if cb != 0 {
				t.Errorf("%v: ChunkBytes = %d for an empty tensor", fc.ti.Shape, cb)
			}
			continue
		}
		want := encode(t, c, fc.ti, fc.src)
		nchunks := int((fc.ti.Size + cb - 1) / cb)
		for _, per := range []int{1, 2, 3, nchunks} {
			for _, sk := range []string{"none", "kept", "write fails", "read fails"} {
				var spill *numtest.Spill
				var sp codec.Spill
				if sk != "none" {
					spill = &numtest.Spill{FailWrite: sk == "write fails", FailRead: sk == "read fails"}
					sp = spill
				}
				var released []int64 // the measuring pass's ranges, in order
				ch, err := c.MeasureChunks(context.Background(), fc.ti, fc.src, per, func(off, n int64) {
					if off == 0 {
						released = released[:0]
					}
					released = append(released, off, n)
				}, sp)
				if err != nil {
					t.Fatal(err)
				}
				if ch.Size() != int64(len(want)) {
					t.Fatalf("%s %v per %d: Size %d, payload %d bytes", fc.ti.DType, fc.ti.Shape, per, ch.Size(), len(want))
				}
				var end int64
				for k := 0; k < len(released); k += 2 {
					if released[k] != end || released[k+1] > int64(per)*cb {
						t.Fatalf("%s per %d: released [%d, +%d) after %d", fc.ti.DType, per, released[k], released[k+1], end)
					}
					end += released[k+1]
				}
				if end != fc.ti.Size {
					t.Fatalf("%s per %d: released %d of %d bytes", fc.ti.DType, per, end, fc.ti.Size)
				}
				parts := make([][]byte, (nchunks+per-1)/per)
				x, err := c.IndexChunks(want, fc.ti, 1, nil)
				if err != nil {
					t.Fatal(err)
				}
				dec := make([]byte, fc.ti.Size)
				var wg sync.WaitGroup
				errs := make([]error, len(parts))
				for j := range parts {
					wg.Add(1)
					go func() {
						defer wg.Done()
						k0, k1 := j*per, min((j+1)*per, nchunks)
						if parts[j], errs[j] = ch.AppendChunks(nil, k0, k1); errs[j] != nil {
							return
						}
						off := int64(k0) * cb
						errs[j] = x.DecodeChunks(dec[off:min(int64(k1)*cb, fc.ti.Size)], k0, k1)
						if a, b := x.Range(k0, k1); !bytes.Equal(want[a:b], parts[j]) {
							errs[j] = fmt.Errorf("chunks [%d, %d): Range [%d, %d) is not their bytes", k0, k1, a, b)
						}
					}()
				}
				wg.Wait()
				if err := errors.Join(errs...); err != nil {
					t.Fatalf("%s per %d: %v", fc.ti.DType, per, err)
				}
				if got := bytes.Join(parts, nil); !bytes.Equal(got, want) {
					t.Fatalf("%s %v per %d: parts of %d bytes differ from the payload of %d", fc.ti.DType, fc.ti.Shape, per, len(got), len(want))
				}
				if !bytes.Equal(dec, fc.src) {
					t.Fatalf("%s per %d: decoded chunks differ from the source", fc.ti.DType, per)
				}
				// Kept chunks are read back, each once; a spill that failed
				// is not read (write) or read and given up (read).
				if spill != nil {
					want := map[string]int{"kept": nchunks, "write fails": 0, "read fails": nchunks}[sk]
					if spill.Reads.Load() != int64(want) {
						t.Fatalf("%s per %d, spill %s: %d reads, want %d", fc.ti.DType, per, sk, spill.Reads.Load(), want)
					}
				}
			}
		}
	}
}

// TestRatios checks that coding pays on realistic weights: the exponent
// plane of BF16 is far from random (about 11 of 16 bits are needed).
func TestRatios(t *testing.T) {
	n := 2 * FloatChunk
	for _, c := range []struct {
		d   tensor.DType
		max float64
	}{{tensor.BF16, 0.75}, {tensor.F16, 0.90}, {tensor.F32, 0.90}} {
		src := weights(t, c.d, n, 4)
		p := roundTrip(t, info(c.d, int64(n)), src, map[tensor.DType]int{tensor.BF16: FormBF16, tensor.F16: FormF16, tensor.F32: FormF32}[c.d])
		if r := float64(len(p)) / float64(len(src)); r > c.max {
			t.Errorf("%s: payload is %.3f of the source, want at most %.2f", c.d, r, c.max)
		}
	}
}

// planes returns the mode of every plane of payload p.
func planes(t *testing.T, p []byte, ti tensor.Info) []byte {
	t.Helper()
	form := int(p[1])
	chunk := int(binary.LittleEndian.Uint32(p[2:]))
	n := int(binary.LittleEndian.Uint64(p[6:]))
	var modes []byte
	off := headerSize
	for k := 0; k*chunk < n; k++ {
		for range width(form) {
			modes = append(modes, p[off])
			off += planeHead + int(binary.LittleEndian.Uint32(p[off+1:]))
		}
	}
	return modes
}

func TestRandomBytesFallBackToRaw(t *testing.T) {
	for _, d := range []tensor.DType{tensor.BF16, tensor.F16, tensor.F32, tensor.F64, tensor.U8} {
		n := 2*BytesChunk/int(d.BlockBytes()) + 17
		ti := info(d, int64(n))
		src := randomBytes(int(ti.Size), uint64(d))
		p := roundTrip(t, ti, src, chooseForm(d, src, 0, nil))
		modes := planes(t, p, ti)
		for i, m := range modes {
			if m != modeRaw {
				t.Fatalf("%s: plane %d has mode %d, want raw", d, i, m)
			}
		}
		if len(modes) < 3 {
			t.Fatalf("%s: only %d planes", d, len(modes))
		}
		if over := len(p) - len(src); over > headerSize+planeHead*len(modes) {
			t.Errorf("%s: %d bytes over the source", d, over)
		}
	}
}

func TestWorkersGiveIdenticalPayloads(t *testing.T) {
	n := 5*FloatChunk + 9
	src := weights(t, tensor.BF16, n, 6)
	ti := info(tensor.BF16, int64(n))
	var want []byte
	for _, w := range []int{1, 2, 7} {
		c := &Codec{}
		c.SetWorkers(w)
		p := encode(t, c, ti, src)
		if want == nil {
			want = p
		} else if !bytes.Equal(p, want) {
			t.Fatalf("workers=%d: payload differs", w)
		}
	}
}

func TestPaddingBoundsDensity(t *testing.T) {
	ti := info(tensor.BF16, 1<<20)
	p := roundTrip(t, ti, make([]byte, ti.Size), FormBF16)
	if int64(len(p)) != minLen(ti.Elems()) {
		t.Errorf("all-zero tensor: %d bytes, want the minimum %d", len(p), minLen(ti.Elems()))
	}
	c := &Codec{}
	if _, err := c.DecodeBytes(p[:len(p)-1], ti, 1); !errors.Is(err, codec.ErrCorrupt) {
		t.Errorf("short padding: err = %v", err)
	}
	q := append(bytes.Clone(p), 0)
	if _, err := c.DecodeBytes(q, ti, 1); !errors.Is(err, codec.ErrCorrupt) {
		t.Errorf("long padding: err = %v", err)
	}
	q = bytes.Clone(p)
	q[len(q)-1] = 1
	if _, err := c.DecodeBytes(q, ti, 1); !errors.Is(err, codec.ErrCorrupt) {
		t.Errorf("non-zero padding: err = %v", err)
	}
}

func TestCorrupt(t *testing.T) {
	c := &Codec{}
	ti := info(tensor.BF16, 3, 100)
	p := encode(t, c, ti, weights(t, tensor.BF16, 300, 8))
	for n := range len(p) {
		if _, err := c.DecodeBytes(p[:n], ti, 1); !errors.Is(err, codec.ErrCorrupt) {
			t.Fatalf("truncated to %d bytes: err = %v", n, err)
		}
	}
	for _, bad := range []tensor.Info{info(tensor.BF16, 3, 101), info(tensor.F16, 3, 100), info(tensor.F32, 3, 100)} {
		if _, err := c.DecodeBytes(p, bad, 1); !errors.Is(err, codec.ErrCorrupt) {
			t.Errorf("%s %v: err = %v", bad.DType, bad.Shape, err)
		}
	}
	if _, err := c.DecodeBytes(p, ti, 2); !errors.Is(err, codec.ErrCorrupt) {
		t.Errorf("version 2: err = %v", err)
	}
	// Every single-byte change is either caught or gives other bytes:
	// never a panic.
	for i := range p {
		q := bytes.Clone(p)
		q[i] ^= 0x5a
		if _, err := c.DecodeBytes(q, ti, 1); err != nil && !errors.Is(err, codec.ErrCorrupt) {
			t.Fatalf("byte %d: err = %v, not ErrCorrupt", i, err)
		}
	}
}

// TestHalfWidening checks the widening table against tensor.HalfToFloat
// on every binary16 value that is not a NaN, and that it keeps NaN
// payloads.
func TestHalfWidening(t *testing.T) {
	for h := range 1 << 16 {
		got := widen[h]
		if e, m := h>>10&31, h&1023; e == 31 && m != 0 {
			if got>>13&1023 != uint32(m) || got>>23&255 != 255 || got>>31 != uint32(h>>15) {
				t.Fatalf("NaN %#04x widens to %#08x", h, got)
			}
			continue
		}
		if want := math.Float32bits(tensor.HalfToFloat(uint16(h))); got != want {
			t.Fatalf("half %#04x widens to %#08x, want %#08x", h, got, want)
		}
	}
}

func tinySet() []struct {
	ti  tensor.Info
	src []byte
} {
	x := make([]byte, 2*33)
	for i := range 33 {
		binary.LittleEndian.PutUint16(x[2*i:], tensor.FloatToBF16(float32(math.Sin(float64(5*i+1)))*float32(1+i%4)))
	}
	y := make([]byte, 4*9)
	for i := range 9 {
		binary.LittleEndian.PutUint32(y[4*i:], math.Float32bits(float32(i)/8-0.5))
	}
	return []struct {
		ti  tensor.Info
		src []byte
	}{
		{info(tensor.BF16, 3, 11), x},
		{info(tensor.F32, 9), y},
		{info(tensor.I32, 4), []byte{1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 255, 255, 255, 255}},
	}
}

func TestGolden(t *testing.T) {
	var all []byte
	c := &Codec{}
	for _, s := range tinySet() {
		p := encode(t, c, s.ti, s.src)
		got, err := c.DecodeBytes(p, s.ti, 1)
		if err != nil || !bytes.Equal(got, s.src) {
			t.Fatalf("%s: round trip: %v", s.ti.DType, err)
		}
		all = binary.LittleEndian.AppendUint32(all, uint32(len(p)))
		all = append(all, p...)
	}
	numtest.Golden(t, "testdata/tiny.golden", all, *update)
}

func FuzzDecode(f *testing.F) {
	c := &Codec{}
	c.SetWorkers(2)
	for _, s := range tinySet() {
		f.Add(encode(f, c, s.ti, s.src), uint16(s.ti.DType), uint16(s.ti.Elems()))
	}
	f.Add(encode(f, c, info(tensor.BF16, 300), weights(f, tensor.BF16, 300, 1)), uint16(tensor.BF16), uint16(300))
	f.Add(encode(f, c, info(tensor.F32, 300), weights(f, tensor.F32, 300, 1)), uint16(tensor.F32), uint16(300))
	f.Fuzz(func(t *testing.T, payload []byte, dt, n uint16) {
		d := tensor.DType(dt)
		if !d.Known() {
			return
		}
		ti := info(d, int64(n))
		if ti.Size == 0 && n != 0 {
			return // not a whole number of blocks
		}
		got, err := c.DecodeBytes(payload, ti, 1)
		if err != nil {
			if !errors.Is(err, codec.ErrCorrupt) {
				t.Fatalf("error is not ErrCorrupt: %v", err)
			}
			return
		}
		if int64(len(got)) != ti.Size {
			t.Fatalf("decoded %d bytes for a tensor of %d", len(got), ti.Size)
		}
		// A payload that decodes re-encodes to bytes that decode the same.
		again, err := c.DecodeBytes(encode(t, c, ti, got), ti, 1)
		if err != nil || !bytes.Equal(again, got) {
			t.Fatalf("re-encoding: %v", err)
		}
	})
}

func benchData(b *testing.B) (tensor.Info, []byte) {
	n := 64 * FloatChunk
	return info(tensor.BF16, int64(n)), weights(b, tensor.BF16, n, 1)
}

func BenchmarkEncodeBF16(b *testing.B) {
	ti, src := benchData(b)
	c := &Codec{}
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		if _, err := c.Append(nil, ti, src); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeBF16(b *testing.B) {
	ti, src := benchData(b)
	c := &Codec{}
	p, err := c.Append(nil, ti, src)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		if _, err := c.DecodeBytes(p, ti, 1); err != nil {
			b.Fatal(err)
		}
	}
}
