package tenpakx

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"math"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/codec/intq"
	"github.com/tpconvert/tpconvert/codec/numtest"
	"github.com/tpconvert/tpconvert/tensor"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

func newCodec(t testing.TB, o codec.Options) *Codec {
	t.Helper()
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c.(*Codec)
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
	c, err := codec.ByID(codec.IDTenpakXV1)
	if err != nil {
		t.Fatal(err)
	}
	if c.Name() != "tenpak_x_v1" || c.ID() != codec.IDTenpakXV1 || c.Version() != Version {
		t.Errorf("ByID(%d) = %s (ID %d, version %d)", codec.IDTenpakXV1, c.Name(), c.ID(), c.Version())
	}
}

func TestOptions(t *testing.T) {
	for _, tc := range []struct {
		o      codec.Options
		params string // "" = must be refused
	}{
		{codec.Options{}, "rank=32 group=row seed=0"},
		{codec.Options{Rank: 8, GroupSize: 128, Seed: 7}, "rank=8 group=128 seed=7"},
		{codec.Options{Rank: MaxRank}, "rank=65535 group=row seed=0"},
		{codec.Options{Rank: -1}, ""},
		{codec.Options{Rank: MaxRank + 1}, ""},
		{codec.Options{GroupSize: -4}, ""},
		{codec.Options{GroupSize: math.MaxUint32 + 1}, ""},
	} {
		c, err := New(tc.o)
		if tc.params == "" {
			if err == nil {
				t.Errorf("New(%+v) accepted invalid options", tc.o)
			}
			continue
		}
		if err != nil {
			t.Errorf("New(%+v): %v", tc.o, err)
			continue
		}
		if got := c.Params(); got != tc.params {
			t.Errorf("New(%+v).Params() = %q, want %q", tc.o, got, tc.params)
		}
	}
}

func TestPayloadSize(t *testing.T) {
	for _, tc := range []struct {
		rows, cols, rank, group int
		want                    int64
	}{
		// 15 + L 2·4096·32 + R 2·32·4096 + codebook 2048 + indices 4096·1024
		// + codes 4096·4096/2 + scales and offsets 4·4096.
		{4096, 4096, 32, 0, 15 + 262144 + 262144 + 2048 + 4194304 + 8388608 + 16384},
		{4096, 4096, 32, 128, 15 + 262144 + 262144 + 2048 + 4194304 + 8388608 + 4*4096*32},
		{1, 1, 1, 0, 15 + 2 + 2 + 2048 + 1 + 1 + 4},
		{3, 5, 3, 2, 15 + 18 + 30 + 2048 + 6 + 8 + 4*9},
		{5, 3, 0, 0, 15 + 2048 + 5 + 8 + 20},
	} {
		got, err := PayloadSize(tc.rows, tc.cols, tc.rank, tc.group)
		if err != nil || got != tc.want {
			t.Errorf("PayloadSize(%d, %d, %d, %d) = %d, %v; want %d", tc.rows, tc.cols, tc.rank, tc.group, got, err, tc.want)
		}
	}
	for _, tc := range [][4]int{{0, 5, 0, 0}, {5, 0, 0, 0}, {4, 4, 5, 0}, {4, 4, -1, 0}, {1 << 32, 1, 1, 0}, {1 << 30, 1 << 30, 1, 0}, {4, 4, 1, -1}} {
		if _, err := PayloadSize(tc[0], tc[1], tc[2], tc[3]); err == nil {
			t.Errorf("PayloadSize%v succeeded", tc)
		}
	}
	// The arithmetic of the design note, corrected: about 6.26 bits/weight
	// for 4096×4096 at rank 32 with one INT4 group per row.
	size, _ := PayloadSize(4096, 4096, 32, 0)
	if bpw := 8 * float64(size) / (4096 * 4096); math.Abs(bpw-6.26)/6.26 > 0.01 {
		t.Errorf("4096×4096: %.4f bits/weight, want within 1%% of 6.26", bpw)
	}
}

// TestEncode4096 checks that a real 4096×4096 payload at the default
// options has the size PayloadSize gives. It takes a few seconds; with
// -short or the race detector it checks 4096×12 and 12×4096 instead.
func TestEncode4096(t *testing.T) {
	shapes := [][2]int{{4096, 4096}}
	if testing.Short() || raceEnabled {
		shapes = [][2]int{{4096, 12}, {12, 4096}}
		t.Log("-short or -race: checking 4096×12 and 12×4096; run without both for 4096×4096")
	}
	c := newCodec(t, codec.Options{})
	for _, sh := range shapes {
		rows, cols := sh[0], sh[1]
		x := make([]float32, rows*cols)
		rng := numtest.NewRand(4096)
		for i := range x {
			x[i] = float32(rng.NormFloat64() * 0.02)
		}
		var buf bytes.Buffer
		if err := c.Encode(&buf, numtest.Info("big", rows, cols), x); err != nil {
			t.Fatal(err)
		}
		want, err := PayloadSize(rows, cols, min(DefaultRank, rows, cols), 0)
		if err != nil || int64(buf.Len()) != want {
			t.Errorf("%d×%d payload is %d bytes, PayloadSize says %d (%v)", rows, cols, buf.Len(), want, err)
		}
		t.Logf("%d×%d: %d bytes, %.4f bits/weight", rows, cols, buf.Len(), 8*float64(buf.Len())/float64(rows*cols))
	}
}

// TestShapes round-trips awkward shapes: smaller than the rank, one row or
// column, columns not a multiple of 4, all-zero and constant data.
func TestShapes(t *testing.T) {
	rng := numtest.NewRand(11)
	gauss := func(rows, cols int) []float32 { return numtest.Weights{}.Matrix(rng, rows, cols) }
	constCols := func(rows, cols int) []float32 {
		x := make([]float32, rows*cols)
		for i := range x {
			x[i] = float32(i%cols) - 3
		}
		return x
	}
	zeroRows := func(rows, cols int) []float32 {
		x := gauss(rows, cols)
		for r := 0; r < rows; r += 2 {
			clear(x[r*cols : (r+1)*cols])
		}
		return x
	}
	for _, tc := range []struct {
		name  string
		shape []int64
		x     func(rows, cols int) []float32
		o     codec.Options
		bound float64 // relative Frobenius error
	}{
		{"1x1", []int64{1, 1}, gauss, codec.Options{}, 1e-3},
		{"1xN", []int64{1, 300}, gauss, codec.Options{}, 0.05},
		{"Nx1", []int64{300, 1}, gauss, codec.Options{}, 0.01},
		{"vector", []int64{77}, gauss, codec.Options{}, 0.05},
		{"3x5", []int64{3, 5}, gauss, codec.Options{}, 0.01},
		{"7x33", []int64{7, 33}, gauss, codec.Options{GroupSize: 8}, 0.05},
		{"40x6-rank-clamped", []int64{40, 6}, gauss, codec.Options{Rank: 64}, 0.01},
		{"3d", []int64{2, 16, 30}, gauss, codec.Options{Rank: 4}, 0.05},
		{"zeros", []int64{16, 20}, func(r, c int) []float32 { return make([]float32, r*c) }, codec.Options{}, 0},
		{"zero-rows", []int64{64, 130}, zeroRows, codec.Options{}, 0.05},
		{"constant-columns", []int64{50, 37}, constCols, codec.Options{Rank: 1}, 0.01},
		{"rank-1-of-wide", []int64{9, 400}, gauss, codec.Options{Rank: 1, GroupSize: 64}, 0.1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info := tensor.Info{Name: tc.name, DType: tensor.BF16, Shape: tc.shape}
			rows, cols := info.Matrix()
			x := tc.x(int(rows), int(cols))
			c := newCodec(t, tc.o)
			res, payload, y, err := numtest.RoundTrip(c, info, x)
			if err != nil {
				t.Fatal(err)
			}
			rank, group := c.shape(int(rows), int(cols))
			if want, _ := PayloadSize(int(rows), int(cols), rank, group); int64(len(payload)) != want {
				t.Errorf("payload is %d bytes, PayloadSize says %d", len(payload), want)
			}
			if tc.bound == 0 {
				for i, v := range y {
					if v != 0 {
						t.Fatalf("element %d decoded as %v, want 0", i, v)
					}
				}
			} else if !(res.RelErr <= tc.bound) {
				t.Errorf("relative error %.4g > %g", res.RelErr, tc.bound)
			}
		})
	}
}

func TestEncodeRefuses(t *testing.T) {
	c := newCodec(t, codec.Options{})
	for _, tc := range []struct {
		name  string
		shape []int64
		x     []float32
	}{
		{"nan", []int64{2, 2}, []float32{1, float32(math.NaN()), 0, 0}},
		{"inf", []int64{2, 2}, []float32{1, 0, float32(math.Inf(-1)), 0}},
		{"empty", []int64{0, 4}, nil},
		{"overflow", []int64{1, 4}, []float32{1e6, -1e6, 3e5, 0}},
	} {
		err := c.Encode(&bytes.Buffer{}, tensor.Info{Name: "layer." + tc.name, Shape: tc.shape}, tc.x)
		if !errors.Is(err, codec.ErrUnsupported) || !strings.Contains(err.Error(), "layer."+tc.name) {
			t.Errorf("%s: Encode error %v; want codec.ErrUnsupported naming the tensor", tc.name, err)
		}
	}
	if err := c.Encode(&bytes.Buffer{}, numtest.Info("short", 2, 2), make([]float32, 3)); err == nil {
		t.Error("Encode accepted 3 values for a 2×2 tensor")
	}
}

// TestBounds checks reconstruction error on realistic synthetic weights
// against bounds measured with a margin, and against the int4 baseline:
// the low-rank and VQ stages must beat plain INT4 with the same one group
// per row by a wide margin.
func TestBounds(t *testing.T) {
	const rows, cols = 128, 512
	x := numtest.Realistic().Matrix(numtest.NewRand(1), rows, cols)
	info := numtest.Info("realistic", rows, cols)
	for _, tc := range []struct {
		o       codec.Options
		minSQNR float64
	}{
		{codec.Options{}, 29},               // measured 30.4 dB
		{codec.Options{GroupSize: 128}, 31}, // measured 32.8 dB
	} {
		res, _, _, err := numtest.RoundTrip(newCodec(t, tc.o), info, x)
		if err != nil {
			t.Fatal(err)
		}
		if res.SQNR < tc.minSQNR {
			t.Errorf("%+v: %v; want SQNR ≥ %g dB", tc.o, res, tc.minSQNR)
		}
		row, _ := intq.NewInt4(codec.Options{GroupSize: cols})
		base, _, _, err := numtest.RoundTrip(row, info, x)
		if err != nil {
			t.Fatal(err)
		}
		if res.SQNR < base.SQNR+10 {
			t.Errorf("%+v: SQNR %.2f dB, int4 with row groups %.2f dB; want 10 dB better", tc.o, res.SQNR, base.SQNR)
		}
	}
}

// TestLowRankExact checks the randomized SVD on an exactly low-rank matrix:
// the factors alone must reproduce it up to FP16 rounding.
func TestLowRankExact(t *testing.T) {
	const rows, cols, rank = 300, 200, 5
	x := numtest.Weights{Rank: rank, LowRank: 1e6}.Matrix(numtest.NewRand(5), rows, cols)
	isq := slices.Repeat([]float64{1}, cols)
	lf, rf, err := factor(slices.Clone(x), rows, cols, 8, isq, numtest.NewRand(1), 2)
	if err != nil {
		t.Fatal(err)
	}
	y := make([]float32, len(x))
	for i := range rows {
		for j := range cols {
			var s float32
			for k := range 8 {
				s += lf[i*8+k] * rf[k*cols+j]
			}
			y[i*cols+j] = s
		}
	}
	if rel, _ := numtest.Compare(x, y); rel > 2e-3 {
		t.Errorf("rank-%d matrix: relative error of L·R = %.3g, want ≤ 2e-3", rank, rel)
	}
}

func TestImportance(t *testing.T) {
	x := []float32{
		1, -2, 0, 4,
		-1, 2, 0, 2,
	}
	got := importance(x, 2, 4, 2)
	want := []float64{0.5 + 1.5*1.0/3, 0.5 + 1.5*2.0/3, 0.5, 2.0}
	for i := range want {
		if math.Abs(got[i]-want[i]) > 1e-12 {
			t.Errorf("importance = %v, want %v", got, want)
			break
		}
	}
	if got := importance([]float32{3, -3, 3, 3}, 2, 2, 1); got[0] != 1 || got[1] != 1 {
		t.Errorf("equal columns: importance = %v, want 1s", got)
	}
}

// TestKDTree checks that the tree search returns exactly what brute force
// does, including ties between duplicate entries and zero weights.
func TestKDTree(t *testing.T) {
	rng := numtest.NewRand(3)
	for _, dup := range []bool{false, true} {
		cb := make([]vec, CodebookSize)
		for i := range cb {
			for k := range VectorDim {
				cb[i][k] = float32(numtest.StudentT(rng, 4))
			}
			if dup && i%3 == 2 {
				cb[i] = cb[i-2] // duplicates: the lower index must win
			}
		}
		tree := newKDTree(cb)
		var stack kdStack
		for q := range 20000 {
			var e, w vec
			for k := range VectorDim {
				e[k] = float32(2 * numtest.StudentT(rng, 4))
				w[k] = float32(0.5 + 1.5*rng.Float64())
			}
			if q%7 == 0 {
				w[3] = 0 // a padded element
			}
			if q%11 == 0 {
				e = cb[rng.IntN(len(cb))]
			}
			want := nearestBrute(cb, &e, &w)
			if got := tree.nearest(&e, &w, -1, &stack); got != want {
				t.Fatalf("query %v weights %v: tree %d, brute force %d", e, w, got, want)
			}
			if got := tree.nearest(&e, &w, rng.IntN(len(cb)), &stack); got != want {
				t.Fatalf("query %v weights %v with a guess: tree %d, brute force %d", e, w, got, want)
			}
		}
	}
}

func TestDeterminism(t *testing.T) {
	const rows, cols = 96, 301
	x := numtest.Realistic().Matrix(numtest.NewRand(2), rows, cols)
	info := numtest.Info("det", rows, cols)
	c := newCodec(t, codec.Options{Seed: 5})
	want := encode(t, c, info, x)
	if got := encode(t, c, info, x); !bytes.Equal(got, want) {
		t.Error("two encodes with the same seed differ")
	}
	for _, workers := range []int{1, 3} {
		c.workers = workers
		if got := encode(t, c, info, x); !bytes.Equal(got, want) {
			t.Errorf("encode with %d workers differs", workers)
		}
	}
	c.workers = 0
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	if got := encode(t, c, info, x); !bytes.Equal(got, want) {
		t.Error("encode with GOMAXPROCS=1 differs")
	}
	runtime.GOMAXPROCS(4)
	if got := encode(t, c, info, x); !bytes.Equal(got, want) {
		t.Error("encode with GOMAXPROCS=4 differs")
	}
	if got := encode(t, newCodec(t, codec.Options{Seed: 6}), info, x); bytes.Equal(got, want) {
		t.Error("encodes with seeds 5 and 6 are identical")
	}
}

// tiny returns the golden input: a 12×18 matrix, large enough for the
// randomized sketch at rank 2 (12 > 2 + Oversampling), with 18 columns
// (not a multiple of 4).
func tiny() (tensor.Info, []float32) {
	const rows, cols = 12, 18
	x := make([]float32, rows*cols)
	for i := range x {
		r, c := i/cols, i%cols
		x[i] = float32(math.Sin(float64(3*r+7*c+1))) * float32(1+c%3)
	}
	return numtest.Info("tiny", rows, cols), x
}

func TestGolden(t *testing.T) {
	info, x := tiny()
	c := newCodec(t, codec.Options{Rank: 2, GroupSize: 4, Seed: 1})
	payload := encode(t, c, info, x)
	numtest.Golden(t, "testdata/tiny.golden", payload, *update)
	y := make([]float32, len(x))
	if err := c.Decode(y, payload, info, Version); err != nil {
		t.Fatal(err)
	}
	if rel, _ := numtest.Compare(x, y); rel > 0.01 {
		t.Errorf("golden round trip: relative error %.3g", rel)
	}
}

// TestDecodeMath decodes a hand-built payload: every term of
// W' = L·R + C[idx] + (q·scale + offset) is checked.
func TestDecodeMath(t *testing.T) {
	const rows, cols = 2, 5
	p, _ := newLayout(rows, cols, 1, 0)
	b := make([]byte, p.end)
	b[0] = Version
	binary.LittleEndian.PutUint32(b[1:], rows)
	binary.LittleEndian.PutUint32(b[5:], cols)
	binary.LittleEndian.PutUint16(b[9:], 1)
	h := func(off int, v float32) { binary.LittleEndian.PutUint16(b[off:], tensor.FloatToHalf(v)) }
	h(p.l, 2) // L = [2; -1]
	h(p.l+2, -1)
	for c := range cols { // R = [1 2 3 4 5]
		h(p.r+2*c, float32(c+1))
	}
	for k := range 4 { // C[1] = [10 20 30 40], C[2] = [100 200 300 400]
		h(p.cb+8+2*k, float32(10*(k+1)))
		h(p.cb+16+2*k, float32(100*(k+1)))
	}
	copy(b[p.idx:], []byte{1, 2, 2, 1}) // row 0: C[1], C[2]; row 1: C[2], C[1]
	// Codes 0..9 over the 10 elements, scale 0.5 and offset -1 for row 0,
	// scale 0 and offset 3 for row 1.
	copy(b[p.res:], []byte{0x10, 0x32, 0x54, 0x76, 0x98})
	nc := 5
	h(p.res+nc, 0.5)
	h(p.res+nc+2, 0)
	h(p.res+nc+4, -1)
	h(p.res+nc+6, 3)
	want := []float32{
		2 + 10 + 0*0.5 - 1, 4 + 20 + 1*0.5 - 1, 6 + 30 + 2*0.5 - 1, 8 + 40 + 3*0.5 - 1, 10 + 100 + 4*0.5 - 1,
		-1 + 100 + 3, -2 + 200 + 3, -3 + 300 + 3, -4 + 400 + 3, -5 + 10 + 3,
	}
	got := make([]float32, rows*cols)
	if err := newCodec(t, codec.Options{}).Decode(got, b, numtest.Info("m", rows, cols), Version); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("decoded %v\nwant    %v", got, want)
	}
}

func TestDecodeErrors(t *testing.T) {
	info, x := tiny()
	n := len(x)
	c := newCodec(t, codec.Options{Rank: 2})
	good := encode(t, c, info, x)
	p, _ := newLayout(12, 18, 2, 0)
	mutate := func(f func(b []byte) []byte) []byte { return f(slices.Clone(good)) }
	nan := func(off int) []byte {
		return mutate(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[off:], 0x7E00); return b })
	}
	for _, tc := range []struct {
		name    string
		payload []byte
		info    tensor.Info
		n       int
		version uint16
	}{
		{"empty", nil, info, n, Version},
		{"short-header", good[:10], info, n, Version},
		{"truncated", good[:len(good)-1], info, n, Version},
		{"extra-byte", append(slices.Clone(good), 0), info, n, Version},
		{"record-version", good, info, n, 2},
		{"layout-version", mutate(func(b []byte) []byte { b[0] = 9; return b }), info, n, Version},
		{"rows", good, numtest.Info("tiny", 18, 12), n, Version},
		{"cols", good, numtest.Info("tiny", 12, 17), 12 * 17, Version},
		{"dst-length", good, info, n - 1, Version},
		{"rank-too-big", mutate(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[9:], 13); return b }), info, n, Version},
		{"rank-changed", mutate(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[9:], 3); return b }), info, n, Version},
		{"group-changed", mutate(func(b []byte) []byte { binary.LittleEndian.PutUint32(b[11:], 3); return b }), info, n, Version},
		{"nan-L", nan(p.l), info, n, Version},
		{"nan-R", nan(p.r + 4), info, n, Version},
		{"nan-codebook", nan(p.cb + 100), info, n, Version},
		{"nan-scale", nan(p.res + 110), info, n, Version},
		{"inf-offset", mutate(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[len(b)-2:], 0x7C00); return b }), info, n, Version},
	} {
		err := c.Decode(make([]float32, tc.n), tc.payload, tc.info, tc.version)
		if !errors.Is(err, codec.ErrCorrupt) {
			t.Errorf("%s: Decode error %v, want codec.ErrCorrupt", tc.name, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	c := newCodec(f, codec.Options{Rank: 2, GroupSize: 3})
	for _, sh := range [][2]int{{1, 1}, {2, 3}, {3, 8}, {4, 5}} {
		x := numtest.Weights{}.Matrix(numtest.NewRand(uint64(sh[0])), sh[0], sh[1])
		f.Add(encode(f, c, numtest.Info("seed", sh[0], sh[1]), x), uint8(sh[0]), uint8(sh[1]))
	}
	f.Add([]byte{1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}, uint8(1), uint8(1))
	f.Fuzz(func(t *testing.T, payload []byte, rows, cols uint8) {
		err := numtest.CheckDecode(t, c, payload, int(rows), int(cols))
		if err == nil && (rows == 0 || cols == 0) {
			t.Errorf("Decode accepted a payload for an empty %d×%d tensor", rows, cols)
		}
	})
}

// TestCost checks that Cost covers what Encode and Decode allocate without
// overstating it wildly. The total allocated is an upper bound on the peak
// that also counts short-lived temporaries (k-means trees, gonum
// workspaces) that are never live together.
func TestCost(t *testing.T) {
	for _, sh := range [][2]int{{300, 1000}, {1000, 300}, {20, 20}} {
		x := numtest.Realistic().Matrix(numtest.NewRand(1), sh[0], sh[1])
		info := numtest.Info("cost", sh[0], sh[1])
		c := newCodec(t, codec.Options{})
		c.workers = 1
		size, _ := PayloadSize(sh[0], sh[1], min(DefaultRank, sh[0], sh[1]), 0)
		buf := bytes.NewBuffer(make([]byte, 0, size))
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		if err := c.Encode(buf, info, x); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		enc := int64(after.TotalAlloc - before.TotalAlloc)
		payload := buf.Bytes()
		dst := make([]float32, len(x))
		runtime.ReadMemStats(&before)
		if err := c.Decode(dst, payload, info, Version); err != nil {
			t.Fatal(err)
		}
		runtime.ReadMemStats(&after)
		dec := int64(after.TotalAlloc - before.TotalAlloc)
		cost := c.Cost(info)
		t.Logf("%v: Cost %d, Encode allocated %d, Decode %d", sh, cost, enc, dec)
		if cost < enc || cost < dec || cost > 4*enc+2<<20 {
			t.Errorf("%v: Cost %d; Encode allocated %d bytes, Decode %d", sh, cost, enc, dec)
		}
	}
}

// TestDecodeLeavesDstOnError checks that a corrupt payload is detected
// before any output is written.
func TestDecodeLeavesDstOnError(t *testing.T) {
	info, x := tiny()
	c := newCodec(t, codec.Options{Rank: 2})
	bad := encode(t, c, info, x)
	binary.LittleEndian.PutUint16(bad[len(bad)-2:], 0x7C00) // the last offset
	dst := slices.Repeat([]float32{7}, len(x))
	if err := c.Decode(dst, bad, info, Version); !errors.Is(err, codec.ErrCorrupt) {
		t.Fatalf("Decode error %v, want codec.ErrCorrupt", err)
	}
	for i, v := range dst {
		if v != 7 {
			t.Fatalf("dst[%d] = %v after a failed Decode", i, v)
		}
	}
}
