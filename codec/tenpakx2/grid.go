package tenpakx2

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/tpconvert/tpconvert/tensor"
)

// Grid is the kind of scalar quantization grid of a tensor.
type Grid uint8

// The grids.
const (
	// GridUniform: 2^b evenly spaced levels between a group's (clipped)
	// minimum and maximum; FP16 scale and minimum per group.
	GridUniform Grid = 1
	// GridSymmetric: levels −(2^(b−1)−1)..2^(b−1)−1 times an FP16 scale
	// per group (max|x| / (2^(b−1)−1)).
	GridSymmetric Grid = 2
	// GridNormal: the rows are rotated by a seeded block Hadamard
	// transform (random signs, then a normalized Walsh–Hadamard
	// transform on blocks of the row), which makes the weights nearly
	// Gaussian; each group then takes the 2^b Lloyd–Max levels of the
	// standard normal distribution times an FP16 scale.
	GridNormal Grid = 3
	// GridHalf: every weight as IEEE binary16 (16 bits, no groups).
	GridHalf Grid = 4
)

var gridNames = map[Grid]string{GridUniform: "uniform", GridSymmetric: "symmetric", GridNormal: "normal", GridHalf: "f16"}

func (g Grid) String() string {
	if s, ok := gridNames[g]; ok {
		return s
	}
	return fmt.Sprintf("grid(%d)", uint8(g))
}

// Config is how one tensor is coded: a grid, bits per code, and the number
// of consecutive weights of a row that share a scale.
type Config struct {
	Grid  Grid
	Bits  int
	Group int
	// S8 stores each group's scale (and minimum) as one byte under an
	// FP16 base per row, instead of FP16 per group.
	S8 bool
}

// String formats c as "uniform:4/32" (grid:bits/group), with "s8"
// appended for 8-bit group parameters ("uniform:4/32s8"), or "f16".
func (c Config) String() string {
	if c.Grid == GridHalf {
		return "f16"
	}
	s := fmt.Sprintf("%s:%d/%d", c.Grid, c.Bits, c.Group)
	if c.S8 {
		s += "s8"
	}
	return s
}

// ParseConfig parses the String form.
func ParseConfig(s string) (Config, error) {
	if s == "f16" {
		return Config{Grid: GridHalf, Bits: 16}, nil
	}
	name, rest, ok := strings.Cut(s, ":")
	b, g, ok2 := strings.Cut(rest, "/")
	var c Config
	for k, v := range gridNames {
		if v == name {
			c.Grid = k
		}
	}
	g, c.S8 = strings.CutSuffix(g, "s8")
	bits, err1 := strconv.Atoi(b)
	group, err2 := strconv.Atoi(g)
	if !ok || !ok2 || c.Grid == 0 || err1 != nil || err2 != nil {
		return Config{}, fmt.Errorf("tenpak_x_v2: bad configuration %q (want grid:bits/group, e.g. uniform:4/32)", s)
	}
	c.Bits, c.Group = bits, group
	return c, c.Valid()
}

// Valid reports whether c is a configuration the codec can write.
func (c Config) Valid() error {
	ok := false
	switch c.Grid {
	case GridUniform:
		ok = c.Bits >= 1 && c.Bits <= 8
	case GridSymmetric:
		ok = c.Bits >= 2 && c.Bits <= 8
	case GridNormal:
		ok = c.Bits >= 1 && c.Bits <= MaxNormalBits
	case GridHalf:
		if c.S8 || c.Bits != 16 {
			return fmt.Errorf("tenpak_x_v2: unsupported configuration %s", c)
		}
		return nil
	}
	if !ok || c.Group < 1 || c.Group > MaxGroup {
		return fmt.Errorf("tenpak_x_v2: unsupported configuration %s", c)
	}
	return nil
}

// Limits.
const (
	MaxGroup      = 1 << 16
	MaxNormalBits = 5
	MaxHadamard   = 256 // largest Hadamard block
	MinHadamard   = 16  // rows whose length has no power-of-two factor this large are not rotated
)

// scalesPerGroup is the number of parameters stored per group (scale, and
// the minimum for GridUniform).
func (c Config) scalesPerGroup() int {
	switch c.Grid {
	case GridUniform:
		return 2
	case GridHalf:
		return 0
	}
	return 1
}

// PayloadSize returns the exact payload size in bytes of a rows×cols matrix
// coded with c, or an error if it overflows.
func (c Config) PayloadSize(rows, cols int) (int64, error) {
	if rows < 0 || cols < 0 {
		return 0, fmt.Errorf("tenpak_x_v2: negative shape")
	}
	n := int64(rows) * int64(cols)
	if cols != 0 && n/int64(cols) != int64(rows) || n > tensor.MaxElems {
		return 0, fmt.Errorf("tenpak_x_v2: %d×%d matrix is too large", rows, cols)
	}
	size := int64(HeaderSize)
	if c.Grid == GridHalf {
		return size + 2*n, nil
	}
	if c.Grid == GridNormal {
		size += 4 << c.Bits // the levels, float32
	}
	ng := int64(0)
	if cols > 0 {
		ng = int64((cols + c.Group - 1) / c.Group)
	}
	if c.S8 {
		size += int64(c.scalesPerGroup()) * (2*int64(rows) + int64(rows)*ng)
	} else {
		size += 2 * int64(c.scalesPerGroup()) * int64(rows) * ng
	}
	size += (n*int64(c.Bits) + 7) / 8
	return size, nil
}

// hadamardBlock returns the Hadamard block length used for rows of length
// cols: the largest power of two dividing cols, at most MaxHadamard, or 0
// if that is below MinHadamard (no rotation).
func hadamardBlock(cols int) int {
	if cols <= 0 {
		return 0
	}
	h := cols & -cols
	h = min(h, MaxHadamard)
	if h < MinHadamard {
		return 0
	}
	return h
}

// normalLevels[b] are the 2^b Lloyd–Max reconstruction levels of the
// standard normal distribution (ascending), computed once.
var normalLevels = func() [MaxNormalBits + 1][]float32 {
	var out [MaxNormalBits + 1][]float32
	for b := 1; b <= MaxNormalBits; b++ {
		out[b] = lloydMaxNormal(1 << b)
	}
	return out
}()

// lloydMaxNormal returns the n-level MSE-optimal quantizer of N(0, 1) by
// Lloyd's algorithm on the exact density: thresholds are midpoints, each
// level the conditional mean of its cell, E[X | a<X<b] =
// (φ(a)−φ(b)) / (Φ(b)−Φ(a)).
func lloydMaxNormal(n int) []float32 {
	lv := make([]float64, n)
	for i := range lv { // start from quantiles
		lv[i] = math.Sqrt2 * math.Erfinv(2*(float64(i)+0.5)/float64(n)-1)
	}
	phi := func(x float64) float64 { return math.Exp(-x*x/2) / math.Sqrt(2*math.Pi) }
	cdf := func(x float64) float64 { return 0.5 * math.Erfc(-x/math.Sqrt2) }
	for iter := 0; iter < 500; iter++ {
		next := make([]float64, n)
		for i := range lv {
			a, b := math.Inf(-1), math.Inf(1)
			if i > 0 {
				a = (lv[i-1] + lv[i]) / 2
			}
			if i < n-1 {
				b = (lv[i] + lv[i+1]) / 2
			}
			pa, pb := 0.0, 0.0
			if !math.IsInf(a, 0) {
				pa = phi(a)
			}
			if !math.IsInf(b, 0) {
				pb = phi(b)
			}
			next[i] = (pa - pb) / (cdf(b) - cdf(a))
		}
		lv = next
	}
	// Symmetrize exactly.
	out := make([]float32, n)
	for i := 0; i < n/2; i++ {
		v := float32((lv[n-1-i] - lv[i]) / 2)
		out[i], out[n-1-i] = -v, v
	}
	return out
}

// MaxRelErr is the largest relative error the pipeline accepts from a
// tensor coded with c (codec.ErrorBounder): well above what the grid
// reaches on any tensor it suits (a Gaussian tensor at b bits: 0.60, 0.34,
// 0.19, 0.10 for b = 1..4), far below the error of a grid that fails (a
// tensor coded as zeros has error 1).
func (c Config) MaxRelErr() float64 {
	switch {
	case c.Grid == GridHalf:
		return 0.01
	case c.Bits <= 1:
		return 0.95
	case c.Bits == 2:
		return 0.75
	case c.Bits == 3:
		return 0.5
	}
	return 0.3
}
