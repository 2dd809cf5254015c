package intq

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/codec/numtest"
	"github.com/tpconvert/tpconvert/tensor"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// mustNew creates the codec name; int8, which takes no group size, is
// created without o.GroupSize.
func mustNew(t testing.TB, name string, o codec.Options) codec.Codec {
	t.Helper()
	if name == "int8" {
		o.GroupSize = 0
	}
	c, err := codec.New(name, o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func encode(t testing.TB, c codec.Codec, info tensor.Info, x []float32) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := c.Encode(&buf, info, x); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestRegistered(t *testing.T) {
	for _, tc := range []struct {
		id   uint16
		name string
	}{{codec.IDInt8, "int8"}, {codec.IDInt4, "int4"}} {
		c, err := codec.ByID(tc.id)
		if err != nil || c.Name() != tc.name || c.ID() != tc.id || c.Version() != 1 {
			t.Errorf("ByID(%d) = %v, %v; want %s version 1", tc.id, c, err, tc.name)
		}
	}
}

func TestOptions(t *testing.T) {
	for _, tc := range []struct {
		name   string
		o      codec.Options
		params string // "" = must be refused
	}{
		{"int8", codec.Options{}, "scale=row"},
		{"int8", codec.Options{Seed: 5, Workers: 2}, "scale=row"},
		{"int8", codec.Options{Rank: 5}, ""}, // options a codec does not take are refused
		{"int8", codec.Options{GroupSize: 7}, ""},
		{"int8", codec.Options{Workers: -1}, ""},
		{"int4", codec.Options{}, "group=32"},
		{"int4", codec.Options{GroupSize: 128, Workers: 1}, "group=128"},
		{"int4", codec.Options{GroupSize: 128, Rank: 3}, ""},
		{"int4", codec.Options{GroupSize: -1}, ""},
		{"int4", codec.Options{GroupSize: math.MaxUint32 + 1}, ""},
	} {
		c, err := codec.New(tc.name, tc.o)
		if tc.params == "" {
			if err == nil {
				t.Errorf("%s %+v accepted", tc.name, tc.o)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %+v: %v", tc.name, tc.o, err)
		} else if c.Params() != tc.params {
			t.Errorf("%s %+v: params %q; want %q", tc.name, tc.o, c.Params(), tc.params)
		}
	}
}

func TestSizes(t *testing.T) {
	for _, tc := range []struct {
		rows, cols, group int
		int8, int4        int
	}{
		{4096, 4096, 32, 9 + 8192 + 4096*4096, 13 + 4096*4096/2 + 4*4096*128},
		{3, 5, 2, 9 + 6 + 15, 13 + 8 + 4*9},
		{1, 1, 32, 9 + 2 + 1, 13 + 1 + 4},
		{0, 7, 32, 9, 13},
	} {
		n8, err8 := Int8Size(tc.rows, tc.cols)
		n4, err4 := Int4Size(tc.rows, tc.cols, tc.group)
		if n8 != tc.int8 || n4 != tc.int4 || err8 != nil || err4 != nil {
			t.Errorf("%d×%d group %d: sizes %d, %d (%v, %v); want %d, %d", tc.rows, tc.cols, tc.group, n8, n4, err8, err4, tc.int8, tc.int4)
		}
	}
}

// TestInt8Exact checks the int8 decode math on values that quantize
// exactly: scale = max|x|/127 and q = round(x/scale).
func TestInt8Exact(t *testing.T) {
	x := []float32{127, -63.5, 0, 1, -2, 0, 0, 0}
	c := mustNew(t, "int8", codec.Options{})
	info := numtest.Info("m", 2, 4)
	p := encode(t, c, info, x)
	want := []byte{1, 2, 0, 0, 0, 4, 0, 0, 0}
	want = binary.LittleEndian.AppendUint16(want, tensor.FloatToHalf(1))
	want = binary.LittleEndian.AppendUint16(want, tensor.FloatToHalf(2.0/127))
	want = append(want, 127, byte(0x100-64), 0, 1) // -63.5 rounds away from zero
	want = append(want, byte(0x100-127), 0, 0, 0)
	if !bytes.Equal(p, want) {
		t.Errorf("payload\n% x\nwant\n% x", p, want)
	}
	y := make([]float32, len(x))
	if err := c.Decode(y, p, info, 1); err != nil {
		t.Fatal(err)
	}
	s := tensor.HalfToFloat(tensor.FloatToHalf(2.0 / 127))
	if wantY := []float32{127, -64, 0, 1, -127 * s, 0, 0, 0}; !slices.Equal(y, wantY) {
		t.Errorf("decoded %v, want %v", y, wantY)
	}
}

// TestRoundTrip checks per-element error bounds on every shape: half a
// quantization step plus the FP16 rounding of the parameters.
func TestRoundTrip(t *testing.T) {
	rng := numtest.NewRand(1)
	for _, shape := range [][]int64{{1, 1}, {1, 100}, {100, 1}, {7, 33}, {3, 4, 65}, {64, 256}, {0, 8}, {}} {
		info := tensor.Info{Name: fmt.Sprint(shape), Shape: shape}
		rows, cols := info.Matrix()
		x := numtest.Realistic().Matrix(rng, int(rows), int(cols))
		for _, name := range []string{"int8", "int4"} {
			c := mustNew(t, name, codec.Options{GroupSize: 16})
			_, payload, y, err := numtest.RoundTrip(c, info, x)
			if err != nil {
				t.Fatalf("%s %v: %v", name, shape, err)
			}
			size, _ := Int8Size(int(rows), int(cols))
			if name == "int4" {
				size, _ = Int4Size(int(rows), int(cols), 16)
			}
			if len(payload) != size {
				t.Errorf("%s %v: payload %d bytes, want %d", name, shape, len(payload), size)
			}
			for r := range int(rows) {
				for col := range int(cols) {
					i := r*int(cols) + col
					var step float64
					if name == "int8" {
						step = maxAbs(x[r*int(cols):(r+1)*int(cols)]) / 127
					} else {
						g0 := col / 16 * 16
						g := x[r*int(cols)+g0 : r*int(cols)+min(g0+16, int(cols))]
						step = float64(slices.Max(g)-slices.Min(g)) / 15
					}
					bound := 0.5*step*1.002 + math.Abs(float64(x[i]))/1024 + 1e-7
					if d := math.Abs(float64(x[i] - y[i])); d > bound {
						t.Fatalf("%s %v: element %d: |%g − %g| = %g > %g", name, shape, i, x[i], y[i], d, bound)
					}
				}
			}
		}
	}
}

func maxAbs(x []float32) float64 {
	var m float64
	for _, v := range x {
		m = max(m, math.Abs(float64(v)))
	}
	return m
}

// TestBounds checks SQNR on realistic synthetic weights against bounds
// measured with a margin (int8 ≈ 35.7 dB, int4-g32 ≈ 20.2 dB,
// int4 with one group per row ≈ 13.0 dB on this matrix).
func TestBounds(t *testing.T) {
	const rows, cols = 128, 512
	x := numtest.Realistic().Matrix(numtest.NewRand(1), rows, cols)
	info := numtest.Info("realistic", rows, cols)
	for _, tc := range []struct {
		name    string
		o       codec.Options
		minSQNR float64
		bpw     float64
	}{
		{"int8", codec.Options{}, 34.5, 8 + (9*8+16*rows)/float64(rows*cols)},
		{"int4", codec.Options{}, 19.5, 5 + 13*8/float64(rows*cols)},
		{"int4", codec.Options{GroupSize: cols}, 12, 4 + (13*8+32*rows)/float64(rows*cols)},
	} {
		res, _, _, err := numtest.RoundTrip(mustNew(t, tc.name, tc.o), info, x)
		if err != nil {
			t.Fatal(err)
		}
		if res.SQNR < tc.minSQNR || math.Abs(res.BitsPerWeight-tc.bpw) > 1e-9 {
			t.Errorf("%s %+v: %v; want SQNR ≥ %g dB at %.4f bits/weight", tc.name, tc.o, res, tc.minSQNR, tc.bpw)
		}
	}
}

func TestEncodeRefuses(t *testing.T) {
	for _, name := range []string{"int8", "int4"} {
		c := mustNew(t, name, codec.Options{})
		for _, tc := range []struct {
			what string
			x    []float32
		}{
			{"nan", []float32{1, float32(math.NaN())}},
			{"inf", []float32{float32(math.Inf(1)), 0}},
			{"fp16-overflow", []float32{1e10, -1e10}},
		} {
			err := c.Encode(&bytes.Buffer{}, numtest.Info("blk."+tc.what, 1, 2), tc.x)
			if !errors.Is(err, codec.ErrUnsupported) || !strings.Contains(err.Error(), "blk."+tc.what) {
				t.Errorf("%s %s: error %v; want codec.ErrUnsupported naming the tensor", name, tc.what, err)
			}
		}
		if err := c.Encode(&bytes.Buffer{}, numtest.Info("short", 2, 2), make([]float32, 3)); err == nil {
			t.Errorf("%s accepted 3 values for a 2×2 tensor", name)
		}
	}
}

// decodeCase is a payload Decode must refuse: n values of info, record
// version version.
type decodeCase struct {
	what    string
	payload []byte
	info    tensor.Info
	n       int
	version uint16
}

func TestDecodeErrors(t *testing.T) {
	info := numtest.Info("m", 3, 5)
	x := numtest.Weights{}.Matrix(numtest.NewRand(2), 3, 5)
	for _, name := range []string{"int8", "int4"} {
		c := mustNew(t, name, codec.Options{GroupSize: 2})
		good := encode(t, c, info, x)
		mutate := func(f func(b []byte)) []byte { b := slices.Clone(good); f(b); return b }
		cases := []decodeCase{
			{"empty", nil, info, 15, 1},
			{"short", good[:5], info, 15, 1},
			{"truncated", good[:len(good)-1], info, 15, 1},
			{"extra", append(slices.Clone(good), 0), info, 15, 1},
			{"record-version", good, info, 15, 2},
			{"record-version-0", good, info, 15, 0},
			{"layout-version", mutate(func(b []byte) { b[0] = 2 }), info, 15, 1},
			{"rows", good, numtest.Info("m", 5, 3), 15, 1},
			{"dst", good, info, 14, 1},
		}
		if name == "int8" {
			cases = append(cases, decodeCase{"nan-row-scale", mutate(func(b []byte) { binary.LittleEndian.PutUint16(b[Int8HeaderSize:], 0x7E00) }), info, 15, 1})
		} else {
			cases = append(cases, decodeCase{"inf-offset", mutate(func(b []byte) { binary.LittleEndian.PutUint16(b[len(b)-2:], 0x7C00) }), info, 15, 1},
				decodeCase{"group-0", mutate(func(b []byte) { binary.LittleEndian.PutUint32(b[9:], 0) }), info, 15, 1},
				decodeCase{"group-changed", mutate(func(b []byte) { binary.LittleEndian.PutUint32(b[9:], 3) }), info, 15, 1})
		}
		for _, tc := range cases {
			err := c.Decode(make([]float32, tc.n), tc.payload, tc.info, tc.version)
			if !errors.Is(err, codec.ErrCorrupt) {
				t.Errorf("%s %s: error %v, want codec.ErrCorrupt", name, tc.what, err)
			}
		}
	}
}

func TestDeterminism(t *testing.T) {
	const rows, cols = 301, 333 // odd: row chunks must not share code bytes
	x := numtest.Realistic().Matrix(numtest.NewRand(3), rows, cols)
	info := numtest.Info("det", rows, cols)
	for _, name := range []string{"int8", "int4"} {
		c := mustNew(t, name, codec.Options{GroupSize: 7})
		runtime.GOMAXPROCS(1)
		want := encode(t, c, info, x)
		runtime.GOMAXPROCS(4)
		got := encode(t, c, info, x)
		runtime.GOMAXPROCS(2)
		if !bytes.Equal(got, want) {
			t.Errorf("%s: GOMAXPROCS 1 and 4 give different payloads", name)
		}
	}
}

func tiny() (tensor.Info, []float32) {
	x := make([]float32, 3*11)
	for i := range x {
		x[i] = float32(math.Sin(float64(5*i+1))) * float32(1+i%4)
	}
	return numtest.Info("tiny", 3, 11), x
}

func TestGolden(t *testing.T) {
	info, x := tiny()
	for _, name := range []string{"int8", "int4"} {
		c := mustNew(t, name, codec.Options{GroupSize: 4})
		numtest.Golden(t, "testdata/tiny."+name+".golden", encode(t, c, info, x), *update)
	}
}

func fuzzDecode(f *testing.F, name string) {
	c := mustNew(f, name, codec.Options{GroupSize: 3})
	for _, sh := range [][2]int{{1, 1}, {2, 3}, {3, 8}, {0, 4}} {
		x := numtest.Weights{}.Matrix(numtest.NewRand(uint64(sh[1])), sh[0], sh[1])
		f.Add(encode(f, c, numtest.Info("seed", sh[0], sh[1]), x), uint8(sh[0]), uint8(sh[1]))
	}
	f.Fuzz(func(t *testing.T, payload []byte, rows, cols uint8) {
		numtest.CheckDecode(t, c, payload, int(rows), int(cols))
	})
}

func FuzzDecodeInt8(f *testing.F) { fuzzDecode(f, "int8") }
func FuzzDecodeInt4(f *testing.F) { fuzzDecode(f, "int4") }

func BenchmarkEncode(b *testing.B) {
	x := numtest.Realistic().Matrix(numtest.NewRand(1), 512, 2048)
	info := numtest.Info("w", 512, 2048)
	for _, name := range []string{"int8", "int4"} {
		c := mustNew(b, name, codec.Options{})
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(x)) * 2)
			for b.Loop() {
				if err := c.Encode(&bytes.Buffer{}, info, x); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	x := numtest.Realistic().Matrix(numtest.NewRand(1), 512, 2048)
	info := numtest.Info("w", 512, 2048)
	y := make([]float32, len(x))
	for _, name := range []string{"int8", "int4"} {
		c := mustNew(b, name, codec.Options{})
		p := encode(b, c, info, x)
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(x)) * 2) // FP16 output bytes
			for b.Loop() {
				if err := c.Decode(y, p, info, 1); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
