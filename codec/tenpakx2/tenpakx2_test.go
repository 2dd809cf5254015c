package tenpakx2

import (
	"bytes"
	"errors"
	"flag"
	"math"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/codec/numtest"
	"github.com/tpconvert/tpconvert/tensor"
)

func allConfigs(cols int) []Config {
	var out []Config
	for _, g := range []int{32, 64, 128} {
		for _, b := range []int{1, 2, 3, 4, 5, 6, 8} {
			out = append(out, Config{GridUniform, b, g, false})
		}
		for _, b := range []int{2, 4, 8} {
			out = append(out, Config{GridSymmetric, b, g, false})
		}
		for b := 1; b <= MaxNormalBits; b++ {
			out = append(out, Config{GridNormal, b, g, false})
		}
		for _, b := range []int{2, 4, 6, 8} {
			out = append(out, Config{GridUniform, b, g, true}, Config{GridSymmetric, b, g, true})
		}
		for b := 1; b <= MaxNormalBits; b++ {
			out = append(out, Config{GridNormal, b, g, true})
		}
	}
	return append(out, Config{Grid: GridHalf, Bits: 16})
}

// TestRoundTrip codes a realistic matrix with every configuration: the
// payload has the size PayloadSize promises, Distortions predicts the
// decoded error exactly, and the SQNR grows with the bits.
func TestRoundTrip(t *testing.T) {
	for _, sh := range [][2]int{{48, 256}, {7, 100}, {3, 576}} {
		rows, cols := sh[0], sh[1]
		x := numtest.Realistic().Matrix(numtest.NewRand(uint64(rows)), rows, cols)
		info := numtest.Info("w", rows, cols)
		prev := map[[3]int]float64{}
		for _, cfg := range allConfigs(cols) {
			c := NewPlanned(map[string]Config{"w": cfg}, nil, "")
			res, payload, y, err := numtest.RoundTrip(c, info, x)
			if err != nil {
				t.Fatalf("%v %s: %v", sh, cfg, err)
			}
			want, _ := cfg.PayloadSize(rows, cols)
			if int64(len(payload)) != want {
				t.Errorf("%v %s: payload %d bytes, PayloadSize %d", sh, cfg, len(payload), want)
			}
			var e float64
			for i := range x {
				d := float64(x[i] - y[i])
				e += d * d
			}
			d := Distortions(x, cols, nil, []Config{cfg}, 0)[0]
			if math.Abs(d-e) > 1e-6*e+1e-12 {
				t.Errorf("%v %s: Distortions %g, decoded error %g", sh, cfg, d, e)
			}
			t.Logf("%v %-14s %s", sh, cfg, res)
			if cfg.Grid == GridHalf {
				if res.SQNR < 60 {
					t.Errorf("%v f16: SQNR %.1f dB", sh, res.SQNR)
				}
				continue
			}
			k := [3]int{int(cfg.Grid), cfg.Group, map[bool]int{false: 0, true: 1}[cfg.S8]}
			if p, ok := prev[k]; ok && res.SQNR < p+3 && res.SQNR < 60 {
				t.Errorf("%v %s: SQNR %.2f dB, not ≥3 dB above the previous bit depth's %.2f", sh, cfg, res.SQNR, p)
			}
			prev[k] = res.SQNR
		}
	}
}

// TestGridDataIsExact: weights that lie on an asymmetric 4-bit grid per
// group of 32 (a dequantized Q4_1 checkpoint) come back exactly from
// uniform:4/32, and symmetric 8-bit groups (Q8_0) from symmetric:8/32.
func TestGridDataIsExact(t *testing.T) {
	rng := numtest.NewRand(3)
	rows, cols := 8, 256
	q41 := make([]float32, rows*cols)
	q80 := make([]float32, rows*cols)
	for g := 0; g < rows*cols/32; g++ {
		d := tensor.RoundHalf(float32(0.001 + 0.01*rng.Float64()))
		m := tensor.RoundHalf(float32(-8 * float64(d) * (0.5 + rng.Float64())))
		d8 := tensor.RoundHalf(float32(0.0001 + 0.001*rng.Float64()))
		for i := 0; i < 32; i++ {
			k := float32(rng.IntN(16))
			if i == 0 {
				k = 0
			} else if i == 1 {
				k = 15
			}
			q41[g*32+i] = tensor.RoundHalf(k*d + m)
			k8 := float32(rng.IntN(255) - 127)
			if i == 0 {
				k8 = 127
			}
			q80[g*32+i] = tensor.RoundHalf(k8 * d8)
		}
	}
	for _, tc := range []struct {
		x   []float32
		cfg Config
	}{{q41, Config{GridUniform, 4, 32, false}}, {q80, Config{GridSymmetric, 8, 32, false}}} {
		c := NewPlanned(map[string]Config{"w": tc.cfg}, nil, "")
		_, _, y, err := numtest.RoundTrip(c, numtest.Info("w", rows, cols), tc.x)
		if err != nil {
			t.Fatal(err)
		}
		bad := 0
		for i := range y {
			if tensor.RoundHalf(y[i]) != tc.x[i] {
				bad++
			}
		}
		if bad > 0 {
			t.Errorf("%s: %d of %d weights differ after rounding to F16", tc.cfg, bad, len(y))
		}
	}
}

// TestRotationIsOrthogonal: rotate then unrotate is the identity, and
// rotation keeps the sum of squares.
func TestRotationIsOrthogonal(t *testing.T) {
	for _, cols := range []int{16, 96, 576, 1536, 5632} {
		q := newQuantizer(Config{GridNormal, 3, 64, false}, cols, 9)
		if q.hblk == 0 || cols%q.hblk != 0 {
			t.Fatalf("cols %d: Hadamard block %d", cols, q.hblk)
		}
		x := numtest.Weights{}.Matrix(numtest.NewRand(1), 1, cols)
		y := append([]float32(nil), x...)
		q.rotate(y)
		var a, b float64
		for i := range x {
			a += float64(x[i]) * float64(x[i])
			b += float64(y[i]) * float64(y[i])
		}
		if math.Abs(a-b) > 1e-4*a {
			t.Errorf("cols %d: rotation changed ‖x‖² from %g to %g", cols, a, b)
		}
		q.unrotate(y)
		for i := range x {
			if math.Abs(float64(x[i]-y[i])) > 1e-5 {
				t.Fatalf("cols %d: unrotate(rotate(x))[%d] = %g, want %g", cols, i, y[i], x[i])
			}
		}
	}
	if h := hadamardBlock(100); h != 0 {
		t.Errorf("hadamardBlock(100) = %d, want 0 (largest power-of-two factor 4 < %d)", h, MinHadamard)
	}
}

func TestLloydMaxLevels(t *testing.T) {
	// Known Lloyd–Max levels of N(0,1): 1 bit ±0.7979, 2 bits ±0.4528, ±1.5104.
	for _, c := range []struct {
		b    int
		want []float64
	}{{1, []float64{-0.7979, 0.7979}}, {2, []float64{-1.5104, -0.4528, 0.4528, 1.5104}}} {
		for i, w := range c.want {
			if got := float64(normalLevels[c.b][i]); math.Abs(got-w) > 1e-3 {
				t.Errorf("%d bits, level %d = %.4f, want %.4f", c.b, i, got, w)
			}
		}
	}
	// The SQNR of each level set on N(0, 1), D = 1 − Σ P(cell)·ℓ² (the
	// levels are the cells' centroids), and its distance to the Gaussian
	// rate–distortion bound of 6.02 dB per bit. Max (1960) gives 9.30 dB
	// at 2 bits and 20.22 dB at 4.
	cdf := func(x float64) float64 { return 0.5 * math.Erfc(-x/math.Sqrt2) }
	for b := 1; b <= MaxNormalBits; b++ {
		lv := normalLevels[b]
		var kept float64
		for i, l := range lv {
			lo, hi := math.Inf(-1), math.Inf(1)
			if i > 0 {
				lo = float64(lv[i-1]+l) / 2
			}
			if i < len(lv)-1 {
				hi = float64(l+lv[i+1]) / 2
			}
			kept += (cdf(hi) - cdf(lo)) * float64(l) * float64(l)
		}
		sqnr := -10 * math.Log10(1-kept)
		bound := 20 * math.Log10(2) * float64(b)
		t.Logf("%d bits: SQNR %.2f dB, %.2f dB below the Gaussian bound %.2f dB", b, sqnr, bound-sqnr, bound)
		if want := map[int]float64{2: 9.30, 4: 20.22}[b]; want != 0 && math.Abs(sqnr-want) > 0.02 {
			t.Errorf("%d bits: SQNR %.2f dB, want %.2f", b, sqnr, want)
		}
	}
}

func TestPackBits(t *testing.T) {
	rng := numtest.NewRand(5)
	for b := 1; b <= 8; b++ {
		codes := make([]uint8, 1001)
		for i := range codes {
			codes[i] = uint8(rng.IntN(1 << b))
		}
		buf := make([]byte, (len(codes)*b+7)/8)
		packBits(buf, codes, b)
		for _, off := range []int{0, 1, 7, 500} {
			got := make([]uint8, len(codes)-off)
			unpackBits(got, buf, int64(off*b), b)
			if !bytes.Equal(got, codes[off:]) {
				t.Fatalf("%d bits from code %d: unpack differs", b, off)
			}
		}
	}
}

func TestImportanceWeighting(t *testing.T) {
	// With importance on the first half of the columns, the weighted
	// error of a clipped low-bit grid must not exceed the unweighted
	// choice's weighted error.
	rows, cols := 32, 128
	x := numtest.Realistic().Matrix(numtest.NewRand(8), rows, cols)
	imp := make([]float32, cols)
	for i := range imp {
		imp[i] = 1
		if i < cols/2 {
			imp[i] = 20
		}
	}
	info := numtest.Info("w", rows, cols)
	cfg := Config{GridUniform, 2, 32, false}
	weighted := func(c *Codec) float64 {
		_, _, y, err := numtest.RoundTrip(c, info, x)
		if err != nil {
			t.Fatal(err)
		}
		var e float64
		for i := range x {
			d := float64(x[i] - y[i])
			e += float64(imp[i%cols]) * d * d
		}
		return e
	}
	with := weighted(NewPlanned(map[string]Config{"w": cfg}, map[string][]float32{"w": imp}, ""))
	without := weighted(NewPlanned(map[string]Config{"w": cfg}, nil, ""))
	if with > without {
		t.Errorf("importance-weighted error %g > unweighted coding's %g", with, without)
	}
}

func TestDeterministicAcrossWorkers(t *testing.T) {
	rows, cols := 64, 192
	x := numtest.Realistic().Matrix(numtest.NewRand(2), rows, cols)
	var first []byte
	for _, w := range []int{1, 2, 5} {
		c := NewPlanned(map[string]Config{"w": {GridNormal, 3, 64, false}}, nil, "")
		c.SetWorkers(w)
		var buf bytes.Buffer
		if err := c.Encode(&buf, numtest.Info("w", rows, cols), x); err != nil {
			t.Fatal(err)
		}
		if first == nil {
			first = buf.Bytes()
		} else if !bytes.Equal(first, buf.Bytes()) {
			t.Errorf("%d workers: payload differs", w)
		}
	}
}

func TestCorruptPayloads(t *testing.T) {
	rows, cols := 4, 64
	x := numtest.Realistic().Matrix(numtest.NewRand(2), rows, cols)
	info := numtest.Info("w", rows, cols)
	c := NewPlanned(map[string]Config{"w": {GridNormal, 2, 32, false}}, nil, "")
	var buf bytes.Buffer
	if err := c.Encode(&buf, info, x); err != nil {
		t.Fatal(err)
	}
	good := buf.Bytes()
	mut := func(f func(p []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := map[string][]byte{
		"empty":          nil,
		"truncated":      good[:len(good)-1],
		"extra byte":     append(append([]byte(nil), good...), 0),
		"bad version":    mut(func(p []byte) []byte { p[0] = 9; return p }),
		"bad grid":       mut(func(p []byte) []byte { p[1] = 77; return p }),
		"bad bits":       mut(func(p []byte) []byte { p[2] = 0; return p }),
		"zero group":     mut(func(p []byte) []byte { p[4], p[5] = 0, 0; return p }),
		"wrong rows":     mut(func(p []byte) []byte { p[8] = 5; return p }),
		"wrong cols":     mut(func(p []byte) []byte { p[12] = 65; return p }),
		"bad hadamard":   mut(func(p []byte) []byte { p[16] = 3; return p }),
		"NaN level":      mut(func(p []byte) []byte { copy(p[HeaderSize:], []byte{0, 0, 0xc0, 0x7f}); return p }),
		"scale format":   mut(func(p []byte) []byte { p[3] = 2; return p }),
		"group too big":  mut(func(p []byte) []byte { p[6] = 0xff; return p }),
		"bits too large": mut(func(p []byte) []byte { p[2] = 6; return p }),
	}
	for name, p := range cases {
		dst := make([]float32, rows*cols)
		for i := range dst {
			dst[i] = 42
		}
		err := c.Decode(dst, p, info, Version)
		if !errors.Is(err, codec.ErrCorrupt) {
			t.Errorf("%s: Decode error %v, want ErrCorrupt", name, err)
		}
	}
	if err := c.Decode(make([]float32, rows*cols), good, info, Version+1); !errors.Is(err, codec.ErrCorrupt) {
		t.Errorf("future version: %v", err)
	}
}

func TestUnsupportedShapes(t *testing.T) {
	c := NewPlanned(nil, nil, "")
	for _, sh := range [][]int64{{0, 4}, {4, 0}} {
		info := tensor.Info{Name: "w", DType: tensor.F32, Shape: sh}
		if err := c.Encode(&bytes.Buffer{}, info, nil); !errors.Is(err, codec.ErrUnsupported) {
			t.Errorf("%v: %v, want ErrUnsupported", sh, err)
		}
	}
}

func TestParseConfig(t *testing.T) {
	for _, s := range []string{"uniform:4/32", "normal:2/128", "symmetric:8/32", "f16", "uniform:4/32s8", "normal:3/64s8"} {
		c, err := ParseConfig(s)
		if err != nil || c.String() != s {
			t.Errorf("ParseConfig(%q) = %v, %v", s, c, err)
		}
	}
	for _, s := range []string{"", "uniform", "uniform:9/32", "normal:6/32", "bogus:4/32", "uniform:4/0", "f16s8", "uniform:4/s8"} {
		if _, err := ParseConfig(s); err == nil {
			t.Errorf("ParseConfig(%q) accepted", s)
		}
	}
}

func FuzzDecode(f *testing.F) {
	for _, cfg := range []Config{{GridUniform, 3, 32, false}, {GridNormal, 2, 16, false}, {GridSymmetric, 8, 32, false}, {Grid: GridHalf, Bits: 16},
		{GridUniform, 4, 16, true}, {GridNormal, 3, 16, true}} {
		for _, sh := range [][2]int{{1, 16}, {2, 32}, {3, 40}} {
			x := numtest.Weights{}.Matrix(numtest.NewRand(1), sh[0], sh[1])
			c := NewPlanned(map[string]Config{"seed": cfg}, nil, "")
			var buf bytes.Buffer
			if err := c.Encode(&buf, numtest.Info("seed", sh[0], sh[1]), x); err != nil {
				f.Fatal(err)
			}
			f.Add(buf.Bytes(), uint8(sh[0]), uint8(sh[1]))
		}
	}
	c := NewPlanned(nil, nil, "")
	f.Fuzz(func(t *testing.T, payload []byte, rows, cols uint8) {
		err := numtest.CheckDecode(t, c, payload, int(rows), int(cols))
		if err == nil && (rows == 0 || cols == 0) {
			t.Errorf("Decode accepted a payload for an empty %d×%d tensor", rows, cols)
		}
	})
}

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// TestGolden pins the exact payload bytes of a tiny matrix under each grid.
func TestGolden(t *testing.T) {
	x := numtest.Realistic().Matrix(numtest.NewRand(11), 3, 32)
	var all []byte
	for _, cfg := range []Config{{GridUniform, 3, 16, false}, {GridSymmetric, 8, 32, false}, {GridNormal, 2, 16, false}, {Grid: GridHalf, Bits: 16},
		{GridUniform, 4, 16, true}, {GridSymmetric, 6, 16, true}, {GridNormal, 3, 16, true}} {
		var buf bytes.Buffer
		if err := NewPlanned(map[string]Config{"w": cfg}, nil, "").Encode(&buf, numtest.Info("w", 3, 32), x); err != nil {
			t.Fatal(err)
		}
		all = append(all, buf.Bytes()...)
	}
	numtest.Golden(t, "testdata/tiny.golden", all, *update)
}

// TestEncodeRowsMatchesEncode: a payload assembled by BeginRows and
// EncodeRows over row ranges (bounds multiples of 8), encoded
// concurrently and in reverse order, is the bytes Encode writes, for every
// configuration, with importance weights and an odd number of columns
// (3-bit rows that do not end on a byte).
func TestEncodeRowsMatchesEncode(t *testing.T) {
	for _, sh := range [][2]int{{40, 100}, {19, 64}} {
		rows, cols := sh[0], sh[1]
		x := numtest.Realistic().Matrix(numtest.NewRand(uint64(cols)), rows, cols)
		info := numtest.Info("w", rows, cols)
		imp := make([]float32, cols)
		for i := range imp {
			imp[i] = float32(1 + i%7)
		}
		for _, cfg := range allConfigs(cols) {
			c := NewPlanned(map[string]Config{"w": cfg}, map[string][]float32{"w": imp}, "")
			var whole bytes.Buffer
			if err := c.Encode(&whole, info, x); err != nil {
				t.Fatal(err)
			}
			size, err := c.PayloadSize(info)
			if err != nil {
				t.Fatal(err)
			}
			p := make([]byte, size)
			if err := c.BeginRows(p, info); err != nil {
				t.Fatal(err)
			}
			errs := make(chan error, rows)
			n := 0
			for r1 := int64(rows); r1 > 0; n++ {
				r0 := (r1 - 1) / 16 * 16 // ranges of 16 rows, then a shorter last one
				go func(r0, r1 int64) {
					errs <- c.EncodeRows(p, info, x[r0*int64(cols):r1*int64(cols)], r0, r1)
				}(r0, r1)
				r1 = r0
			}
			for range n {
				if err := <-errs; err != nil {
					t.Fatal(err)
				}
			}
			if !bytes.Equal(p, whole.Bytes()) {
				t.Errorf("%v %s: rows encoded apart differ from Encode", sh, cfg)
			}
		}
	}
	c := NewPlanned(nil, nil, "")
	info := numtest.Info("w", 20, 8)
	p := make([]byte, 4096)
	if err := c.EncodeRows(p, info, make([]float32, 8*4), 4, 8); err == nil {
		t.Error("EncodeRows accepted rows that do not start at a multiple of 8")
	}
}
