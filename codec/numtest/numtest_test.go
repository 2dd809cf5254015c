package numtest

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/tensor"
)

func TestStudentT(t *testing.T) {
	// Var(t_df) = df/(df−2); the excess kurtosis 6/(df−4) shows the tails.
	rng := NewRand(1)
	const n = 200000
	for _, df := range []float64{0, 5, 10} {
		var m2, m4 float64
		for range n {
			v := StudentT(rng, df)
			m2 += v * v
			m4 += v * v * v * v
		}
		m2, m4 = m2/n, m4/n
		wantVar := 1.0
		if df > 0 {
			wantVar = df / (df - 2)
		}
		if math.Abs(m2-wantVar)/wantVar > 0.05 {
			t.Errorf("df %g: variance %.3f, want %.3f", df, m2, wantVar)
		}
		if kurt := m4 / (m2 * m2); df == 0 && math.Abs(kurt-3) > 0.1 || df == 10 && kurt < 3.3 {
			t.Errorf("df %g: kurtosis %.2f", df, kurt)
		}
	}
}

func TestMatrix(t *testing.T) {
	a := Realistic().Matrix(NewRand(3), 64, 128)
	b := Realistic().Matrix(NewRand(3), 64, 128)
	if !slices.Equal(a, b) {
		t.Error("same seed, different matrices")
	}
	if c := Realistic().Matrix(NewRand(4), 64, 128); slices.Equal(a, c) {
		t.Error("different seeds, same matrix")
	}
	// The scale is that of Weights.Scale: rms near 0.02·sqrt(5/3)·(1+0.5²)^½.
	var ss float64
	for _, v := range a {
		ss += float64(v) * float64(v)
	}
	if rms := math.Sqrt(ss / float64(len(a))); rms < 0.01 || rms > 0.06 {
		t.Errorf("rms %.4f out of the expected range", rms)
	}
	// A pure low-rank matrix has rank ≤ Rank: every 3×3 minor of a rank-2
	// matrix vanishes.
	lr := Weights{Rank: 2, LowRank: 1e9}.Matrix(NewRand(5), 3, 3)
	det := float64(lr[0])*(float64(lr[4])*float64(lr[8])-float64(lr[5])*float64(lr[7])) -
		float64(lr[1])*(float64(lr[3])*float64(lr[8])-float64(lr[5])*float64(lr[6])) +
		float64(lr[2])*(float64(lr[3])*float64(lr[7])-float64(lr[4])*float64(lr[6]))
	if scale := math.Pow(float64(maxAbs(lr)), 3); math.Abs(det) > 1e-4*scale {
		t.Errorf("rank-2 matrix has determinant %g (scale %g)", det, scale)
	}
}

func maxAbs(x []float32) float32 {
	var m float32
	for _, v := range x {
		m = max(m, float32(math.Abs(float64(v))))
	}
	return m
}

func TestCompare(t *testing.T) {
	for _, tc := range []struct {
		x, y         []float32
		relErr, sqnr float64
	}{
		{[]float32{3, 4}, []float32{3, 4}, 0, math.Inf(1)},
		{[]float32{3, 4}, []float32{3, 3}, 0.2, 10 * math.Log10(25)},
		{[]float32{0, 0}, []float32{3, 4}, 5, math.Inf(-1)},
	} {
		rel, sqnr := Compare(tc.x, tc.y)
		if math.Abs(rel-tc.relErr) > 1e-12 || (sqnr != tc.sqnr && math.Abs(sqnr-tc.sqnr) > 1e-9) {
			t.Errorf("Compare(%v, %v) = %v, %v; want %v, %v", tc.x, tc.y, rel, sqnr, tc.relErr, tc.sqnr)
		}
	}
}

func TestGolden(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "x.golden")
	Golden(t, path, []byte("abc"), true)
	if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, []byte("abc")) {
		t.Fatalf("update wrote %q, %v", b, err)
	}
	Golden(t, path, []byte("abc"), false)
	var ft fakeT
	Golden(&ft, path, []byte("abd"), false)
	if !ft.failed {
		t.Error("Golden accepted different bytes")
	}
}

// fakeT records failures instead of failing the test.
type fakeT struct {
	testing.TB
	failed bool
}

func (f *fakeT) Helper()               {}
func (f *fakeT) Errorf(string, ...any) { f.failed = true }
func (f *fakeT) Fatalf(string, ...any) { f.failed = true }
func (f *fakeT) Fatal(...any)          { f.failed = true }

// leaky is a codec whose Decode allocates without bound and returns
// an error that does not wrap codec.ErrCorrupt: CheckDecode must flag both.
type leaky struct{ codec.Codec }

var sink []byte

func (leaky) Version() uint16 { return 1 }
func (leaky) Decode(dst []float32, payload []byte, t tensor.Info, v uint16) error {
	sink = make([]byte, 64<<20)
	return os.ErrInvalid
}

func TestCheckDecode(t *testing.T) {
	var ft fakeT
	CheckDecode(&ft, leaky{}, []byte{1, 2, 3}, 2, 2)
	if !ft.failed {
		t.Error("CheckDecode accepted a 64 MiB allocation and a foreign error")
	}
}
