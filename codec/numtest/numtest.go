// Package numtest is a test harness for numeric codecs, in the manner of
// gonum's testlapack: a seeded PCG source, generators of realistic weight
// matrices, round-trip measurements (relative Frobenius error, SQNR), golden
// files and a decoder check for fuzz targets. It is imported only by tests.
package numtest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/tensor"
)

// NewRand returns a PCG-backed generator seeded with seed.
func NewRand(seed uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, 0x6e756d74657374)) // "numtest"
}

// StudentT returns a Student-t variate with df degrees of freedom
// (df ≤ 0 gives a standard normal): Z / sqrt(χ²_df / df).
func StudentT(rng *rand.Rand, df float64) float64 {
	z := rng.NormFloat64()
	if df <= 0 {
		return z
	}
	return z / math.Sqrt(gamma(rng, df/2)*2/df)
}

// gamma returns a Gamma(shape, 1) variate (Marsaglia and Tsang, with the
// boost for shape < 1).
func gamma(rng *rand.Rand, shape float64) float64 {
	if shape < 1 {
		return gamma(rng, shape+1) * math.Pow(rng.Float64(), 1/shape)
	}
	d := shape - 1.0/3
	c := 1 / math.Sqrt(9*d)
	for {
		x := rng.NormFloat64()
		v := 1 + c*x
		if v <= 0 {
			continue
		}
		v = v * v * v
		u := rng.Float64()
		if math.Log(u) < 0.5*x*x+d-d*v+d*math.Log(v) {
			return d * v
		}
	}
}

// Weights describes a synthetic weight matrix. The zero value gives
// i.i.d. standard normal entries.
type Weights struct {
	// Scale is the typical magnitude of an entry (default 1).
	Scale float64
	// DF is the Student-t degrees of freedom of the entries; ≤ 0 means
	// Gaussian. Trained LLM weights are heavy-tailed; DF = 4–6 is typical.
	DF float64
	// ColumnSpread is the standard deviation of the natural logarithm of
	// per-column scale factors (uneven input-feature magnitudes).
	ColumnSpread float64
	// Rank and LowRank add a rank-Rank component whose Frobenius norm is
	// LowRank times that of the noise part.
	Rank    int
	LowRank float64
}

// Realistic returns the preset used for codec bounds: Student-t entries
// with 5 degrees of freedom, scale 0.02, log-normal column scales
// (σ = 0.5) and a rank-16 component of 0.5× the noise norm.
func Realistic() Weights {
	return Weights{Scale: 0.02, DF: 5, ColumnSpread: 0.5, Rank: 16, LowRank: 0.5}
}

// Matrix returns a row-major rows×cols matrix drawn from rng as w
// describes.
func (w Weights) Matrix(rng *rand.Rand, rows, cols int) []float32 {
	scale := w.Scale
	if scale == 0 {
		scale = 1
	}
	colScale := make([]float64, cols)
	for c := range colScale {
		colScale[c] = math.Exp(w.ColumnSpread * rng.NormFloat64())
	}
	x := make([]float64, rows*cols)
	var noise float64
	for r := range rows {
		for c := range cols {
			v := StudentT(rng, w.DF) * colScale[c]
			x[r*cols+c] = v
			noise += v * v
		}
	}
	if w.Rank > 0 && w.LowRank > 0 {
		u := make([]float64, rows*w.Rank)
		v := make([]float64, w.Rank*cols)
		for i := range u {
			u[i] = rng.NormFloat64()
		}
		for i := range v {
			v[i] = rng.NormFloat64() * colScale[i%cols]
		}
		lr := make([]float64, rows*cols)
		var energy float64
		for r := range rows {
			for k := range w.Rank {
				a := u[r*w.Rank+k]
				row := lr[r*cols : (r+1)*cols]
				for c := range row {
					row[c] += a * v[k*cols+c]
				}
			}
		}
		for _, e := range lr {
			energy += e * e
		}
		if energy > 0 {
			f := w.LowRank * math.Sqrt(noise/energy)
			for i := range x {
				x[i] += f * lr[i]
			}
		}
	}
	out := make([]float32, len(x))
	for i, v := range x {
		out[i] = float32(v * scale)
	}
	return out
}

// Info returns the tensor.Info of an F32 matrix named name.
func Info(name string, rows, cols int) tensor.Info {
	return tensor.Info{Name: name, DType: tensor.F32, Shape: []int64{int64(rows), int64(cols)}}
}

// Result is the outcome of a round trip through a codec.
type Result struct {
	Bytes         int     // payload size
	BitsPerWeight float64 // 8·Bytes / elements
	RelErr        float64 // ‖x − y‖_F / ‖x‖_F
	SQNR          float64 // 10·log10(‖x‖² / ‖x − y‖²), in dB
}

// String formats r for test logs.
func (r Result) String() string {
	return fmt.Sprintf("%.3f bits/weight, SQNR %.2f dB, relative error %.4g", r.BitsPerWeight, r.SQNR, r.RelErr)
}

// RoundTrip encodes x with c, decodes the payload and measures the
// reconstruction. It returns the payload and the decoded values too.
func RoundTrip(c codec.Codec, t tensor.Info, x []float32) (Result, []byte, []float32, error) {
	var buf bytes.Buffer
	if err := c.Encode(&buf, t, x); err != nil {
		return Result{}, nil, nil, err
	}
	y := make([]float32, len(x))
	if err := c.Decode(y, buf.Bytes(), t, c.Version()); err != nil {
		return Result{}, nil, nil, err
	}
	res := Result{Bytes: buf.Len()}
	if len(x) > 0 {
		res.BitsPerWeight = 8 * float64(buf.Len()) / float64(len(x))
	}
	res.RelErr, res.SQNR = Compare(x, y)
	return res, buf.Bytes(), y, nil
}

// Compare returns the relative Frobenius error ‖x − y‖/‖x‖ and the SQNR
// 10·log10(‖x‖²/‖x − y‖²) in dB (+Inf for an exact match). For x = 0 the
// relative error is ‖y‖.
func Compare(x, y []float32) (relErr, sqnr float64) {
	var sig, noise float64
	for i := range x {
		d := float64(x[i]) - float64(y[i])
		sig += float64(x[i]) * float64(x[i])
		noise += d * d
	}
	if sig == 0 {
		return math.Sqrt(noise), math.Inf(-1)
	}
	return math.Sqrt(noise / sig), 10 * math.Log10(sig/noise)
}

// Golden compares got with the file at path, or writes it when update is
// set (tests pass the value of their -update flag).
func Golden(t testing.TB, path string, got []byte, update bool) {
	t.Helper()
	if update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run the test with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Errorf("output differs from %s at byte %d (got %d bytes, want %d); run with -update if the change is intended", path, i, len(got), len(want))
	}
}

// DecodeLimit is the number of bytes a decoder may allocate per call
// beyond a fixed multiple of its input and output sizes; see CheckDecode.
const DecodeLimit = 1 << 20

// CheckDecode runs c.Decode on payload for a rows×cols tensor, as a fuzz
// target does: it fails t if Decode panics, returns an error that does not
// wrap codec.ErrCorrupt, or allocates more than 8·(len(payload) + 4·rows·cols)
// + DecodeLimit bytes. It returns Decode's error.
func CheckDecode(t testing.TB, c codec.Codec, payload []byte, rows, cols int) error {
	t.Helper()
	info := Info("fuzz", rows, cols)
	dst := make([]float32, rows*cols)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	err := c.Decode(dst, payload, info, c.Version())
	runtime.ReadMemStats(&after)
	if err != nil && !errors.Is(err, codec.ErrCorrupt) {
		t.Errorf("Decode error %q does not wrap codec.ErrCorrupt", err)
	}
	limit := 8*(uint64(len(payload))+4*uint64(len(dst))) + DecodeLimit
	if got := after.TotalAlloc - before.TotalAlloc; got > limit {
		t.Errorf("Decode of %d bytes for %d×%d allocated %d bytes (limit %d)", len(payload), rows, cols, got, limit)
	}
	return err
}

// Options returns o without the options the codec name does not take
// (rank, then group size; codec.Options.Only), for tests that create
// every codec with the same options.
func Options(name string, o codec.Options) codec.Options {
	if !codec.Accepts(name, o) {
		o.Rank = 0
	}
	if !codec.Accepts(name, o) {
		o.GroupSize = 0
	}
	return o
}

// Spill is a codec.Spill in memory, sparse (pages of 64 KiB made as they
// are written, so that offsets far apart cost nothing), that counts its
// reads and can fail. Reading bytes never written fails.
type Spill struct {
	mu                  sync.Mutex
	pages               map[int64][]byte
	size                int64
	Reads               atomic.Int64
	FailWrite, FailRead bool
}

const spillPage = 1 << 16

func (m *Spill) WriteAt(p []byte, off int64) (int, error) {
	if m.FailWrite {
		return 0, errors.New("no space left on device")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pages == nil {
		m.pages = map[int64][]byte{}
	}
	for n := 0; n < len(p); {
		pg, o := (off+int64(n))/spillPage, (off+int64(n))%spillPage
		b := m.pages[pg]
		if b == nil {
			b = make([]byte, spillPage)
			m.pages[pg] = b
		}
		n += copy(b[o:], p[n:])
	}
	m.size = max(m.size, off+int64(len(p)))
	return len(p), nil
}

func (m *Spill) ReadAt(p []byte, off int64) (int, error) {
	m.Reads.Add(1)
	if m.FailRead {
		return 0, errors.New("input/output error")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if off+int64(len(p)) > m.size {
		return 0, io.EOF
	}
	for n := 0; n < len(p); {
		pg, o := (off+int64(n))/spillPage, (off+int64(n))%spillPage
		b := m.pages[pg]
		if b == nil {
			return n, errors.New("numtest: reading bytes never written")
		}
		n += copy(p[n:], b[o:])
	}
	return len(p), nil
}
