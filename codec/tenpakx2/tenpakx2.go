// Package tenpakx2 implements the tenpak_x_v2 codec (TenPak-X v2): a
// scalar grid chosen per tensor, with rate control across a whole model.
//
// Each tensor is coded with one Config: a grid, a number of bits per
// weight and a group length (consecutive weights of a row that share an
// FP16 scale):
//
//   - uniform:b/g    asymmetric, 2^b levels between a group's clipped
//     minimum and maximum (FP16 scale and minimum per group);
//   - symmetric:b/g  levels −(2^(b−1)−1)..2^(b−1)−1 times an FP16 scale;
//   - normal:b/g     the rows are first rotated by a seeded block
//     Hadamard transform (random ±1 per column, then a normalized
//     Walsh–Hadamard transform on blocks of up to 256 columns), which
//     spreads outliers and makes weights nearly Gaussian (the
//     incoherence processing of QuIP#); each group then takes the 2^b
//     Lloyd–Max levels of N(0, 1) times an FP16 scale;
//   - f16            every weight as binary16.
//
// Clipping (uniform, symmetric) and the scale (normal) of each group are
// chosen to minimise the squared error, weighted per column by a
// data-free importance when the caller supplies one (see package rate).
//
// Which Config each tensor gets is decided by package rate, which
// estimates every candidate's error on a sample of rows and allocates a
// bit budget over the model. The codec itself only needs the plan: a
// Config per tensor name. The payload is self-describing (header, levels,
// scales, packed codes); decoding needs nothing else. Its layout is
// specified in formats/tpk/CODECS.md.
package tenpakx2

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/codec/internal/par"
	"github.com/tpconvert/tpconvert/tensor"
)

// Format constants.
const (
	// Version is the payload version (record version and first byte).
	Version = 1
	// HeaderSize is the size of the payload header in bytes.
	HeaderSize = 24
	// DefaultSeed seeds the rotation signs.
	DefaultSeed = 0x7e9a4b5d
)

// DefaultConfig codes tensors that have no entry in the plan.
var DefaultConfig = Config{Grid: GridUniform, Bits: 4, Group: 32}

func init() {
	codec.Register(codec.IDTenpakXV2, "tenpak_x_v2",
		"TenPak-X v2: per-tensor grids (uniform, symmetric, Hadamard-rotated Lloyd–Max, f16) chosen by rate control for --bpw/--target-size", New)
	// The default codec, on every weight matrix: DefaultConfig
	// shrinks every checkpoint whose weights take more than 5 bits at
	// the quality of llama.cpp's Q4_1 (CONVERTING.md explains the choice).
	codec.SetDefault("tenpak_x_v2")
	codec.SetDefaultLayers("tenpak_x_v2", "weights")
}

// Codec is the tenpak_x_v2 codec. Its zero plan codes every tensor with
// DefaultConfig.
type Codec struct {
	plan    map[string]Config
	imp     map[string][]float32
	seed    uint32
	workers int
	summary string
}

// New returns the codec with an empty plan (for decoding, or encoding
// every tensor with DefaultConfig; rate control plans it through
// codec.Planner). It takes o.Seed (the seed of the rotation signs is
// DefaultSeed xor its low 32 bits) and o.Workers (goroutines per tensor,
// default GOMAXPROCS), no rank or group size.
func New(o codec.Options) (codec.Codec, error) {
	if err := o.Only("tenpak_x_v2", 0); err != nil {
		return nil, err
	}
	return &Codec{seed: uint32(DefaultSeed ^ o.Seed), workers: o.PerTensor()}, nil
}

// NewPlanned returns the codec that codes each tensor named in plan with
// its Config, weighting column errors by imp[name] when present. summary
// is recorded as Params ("bpw=4 target ...").
func NewPlanned(plan map[string]Config, imp map[string][]float32, summary string) *Codec {
	c, _ := New(codec.Options{})
	cc := c.(*Codec)
	cc.plan, cc.imp, cc.summary = plan, imp, summary
	return cc
}

// SetWorkers sets the number of goroutines Encode and Decode use per
// tensor (default GOMAXPROCS).
func (c *Codec) SetWorkers(n int) { c.workers = max(n, 1) }

// ID returns codec.IDTenpakXV2.
func (*Codec) ID() uint16 { return codec.IDTenpakXV2 }

// Name returns "tenpak_x_v2".
func (*Codec) Name() string { return "tenpak_x_v2" }

// Version returns the payload version.
func (*Codec) Version() uint16 { return Version }

// Params describes the rate-control settings.
func (c *Codec) Params() string {
	if c.summary != "" {
		return c.summary
	}
	return "config=" + DefaultConfig.String()
}

// TensorParams returns the Config chosen for t ("uniform:4/32").
func (c *Codec) TensorParams(t tensor.Info) string { return c.config(t).String() }

// MaxRelErr implements codec.ErrorBounder: the bound of t's Config.
func (c *Codec) MaxRelErr(t tensor.Info) float64 { return c.config(t).MaxRelErr() }

func (c *Codec) config(t tensor.Info) Config {
	if cfg, ok := c.plan[t.Name]; ok {
		return cfg
	}
	return DefaultConfig
}

// Cost returns the working memory of Encode or Decode beyond input and
// output: one code byte per weight, the payload, and row buffers.
func (c *Codec) Cost(t tensor.Info) int64 {
	rows, cols := t.Matrix()
	if rows < 0 || cols < 0 {
		return 0
	}
	size, err := c.config(t).PayloadSize(int(rows), int(cols))
	if err != nil {
		size = 4 * t.Elems()
	}
	return t.Elems() + size + int64(c.workers)*16*cols + 1<<16
}

// PayloadSize returns the exact payload size of t under cfg.
func PayloadSize(t tensor.Info, cfg Config) (int64, error) {
	rows, cols := t.Matrix()
	return cfg.PayloadSize(int(rows), int(cols))
}

func checkShape(t tensor.Info) (rows, cols int, err error) {
	r, cl := t.Matrix()
	if r <= 0 || cl <= 0 || r > math.MaxUint32 || cl > math.MaxUint32 || t.Elems() > tensor.MaxElems {
		return 0, 0, fmt.Errorf("%w: tenpak_x_v2 needs a non-empty matrix, got shape %v", codec.ErrUnsupported, t.Shape)
	}
	return int(r), int(cl), nil
}

// MaxAbs is the largest magnitude the codec accepts: its scales and
// minimums are FP16, whose largest finite value is 65504.
const MaxAbs = 65504

// CheckRange returns an error wrapping codec.ErrUnsupported if x holds a
// value that is not finite or exceeds MaxAbs in magnitude.
func CheckRange(x []float32) error {
	for k, v := range x {
		if !(math.Abs(float64(v)) <= MaxAbs) {
			return fmt.Errorf("%w: element %d is %g, beyond the FP16 range of the scales", codec.ErrUnsupported, k, v)
		}
	}
	return nil
}

// Encode writes t's payload under its planned Config.
func (c *Codec) Encode(w io.Writer, t tensor.Info, x []float32) error {
	return c.EncodeProgress(w, t, x, nil)
}

// EncodeProgress is Encode, calling done (if not nil) as rows are coded
// (codec.ProgressEncoder).
func (c *Codec) EncodeProgress(w io.Writer, t tensor.Info, x []float32, done func(elems int64)) error {
	rows, _, err := checkShape(t)
	if err != nil {
		return err
	}
	if int64(len(x)) != t.Elems() {
		return fmt.Errorf("tenpak_x_v2: %d values for shape %v", len(x), t.Shape)
	}
	size, err := c.PayloadSize(t)
	if err != nil {
		return err
	}
	if err := checkRange(t, x, 0); err != nil {
		return err
	}
	buf := make([]byte, size)
	if err := c.BeginRows(buf, t); err != nil {
		return err
	}
	c.encodeRows(buf, t, x, 0, rows, done)
	_, err = w.Write(buf)
	return err
}

// checkRange is CheckRange for the values x of t that start at element
// off.
func checkRange(t tensor.Info, x []float32, off int64) error {
	for k, v := range x {
		if !(math.Abs(float64(v)) <= MaxAbs) {
			return fmt.Errorf("tenpak_x_v2: tensor %q: %w: element %d is %g, beyond the FP16 range of the scales", t.Name, codec.ErrUnsupported, off+int64(k), v)
		}
	}
	return nil
}

// PayloadSize returns the size of t's payload under its planned Config
// (codec.RowEncoder), or an error wrapping codec.ErrUnsupported for a
// shape the codec cannot code.
func (c *Codec) PayloadSize(t tensor.Info) (int64, error) {
	rows, cols, err := checkShape(t)
	if err != nil {
		return 0, err
	}
	cfg := c.config(t)
	if err := cfg.Valid(); err != nil {
		return 0, err
	}
	return cfg.PayloadSize(rows, cols)
}

// BeginRows writes the header (and the levels) of t's payload into
// payload (codec.RowEncoder).
func (c *Codec) BeginRows(payload []byte, t tensor.Info) error {
	size, err := c.PayloadSize(t)
	if err != nil {
		return err
	}
	if int64(len(payload)) != size {
		return fmt.Errorf("tenpak_x_v2: payload of %d bytes for %d", len(payload), size)
	}
	rows, cols := t.Matrix()
	cfg := c.config(t)
	q := newQuantizer(cfg, int(cols), c.seed)
	buf := payload
	buf[0], buf[1], buf[2], buf[3] = Version, byte(cfg.Grid), byte(cfg.Bits), 0
	if cfg.S8 {
		buf[3] = 1
	}
	le := binary.LittleEndian
	le.PutUint32(buf[4:], uint32(cfg.Group))
	le.PutUint32(buf[8:], uint32(rows))
	le.PutUint32(buf[12:], uint32(cols))
	le.PutUint32(buf[16:], uint32(q.hblk))
	le.PutUint32(buf[20:], c.seed)
	if cfg.Grid == GridNormal {
		for i, l := range q.levels {
			le.PutUint32(buf[HeaderSize+4*i:], math.Float32bits(l))
		}
	}
	return nil
}

// EncodeRows codes matrix rows [r0, r1) of t, whose values are x, into
// payload (codec.RowEncoder). r0 must be a multiple of 8 (so that the
// rows' codes start on a byte) and r1 one too, or the last row.
func (c *Codec) EncodeRows(payload []byte, t tensor.Info, x []float32, r0, r1 int64) error {
	size, err := c.PayloadSize(t)
	if err != nil {
		return err
	}
	rows, cols := t.Matrix()
	if int64(len(payload)) != size || r0 < 0 || r0 > r1 || r1 > rows || r0%8 != 0 || (r1%8 != 0 && r1 != rows) || int64(len(x)) != (r1-r0)*cols {
		return fmt.Errorf("tenpak_x_v2: rows [%d, %d) of %d (%d values) into a payload of %d bytes", r0, r1, rows, len(x), len(payload))
	}
	if err := checkRange(t, x, r0*cols); err != nil {
		return err
	}
	c.encodeRows(payload, t, x, int(r0), int(r1), nil)
	return nil
}

// encodeRows writes the group parameters and codes of matrix rows
// [r0, r1) of t (values x) into payload, whose header BeginRows wrote,
// calling done (if not nil) with the elements of each block of rows coded.
func (c *Codec) encodeRows(payload []byte, t tensor.Info, x []float32, r0, r1 int, done func(int64)) {
	rows64, cols64 := t.Matrix()
	rows, cols := int(rows64), int(cols64)
	cfg := c.config(t)
	imp := c.imp[t.Name]
	if len(imp) != cols {
		imp = nil
	}
	le := binary.LittleEndian
	p := payload[HeaderSize:]
	if cfg.Grid == GridHalf {
		p = p[2*r0*cols:]
		for i, v := range x {
			le.PutUint16(p[2*i:], tensor.FloatToHalf(v))
		}
		if done != nil {
			done(int64(len(x)))
		}
		return
	}
	q := newQuantizer(cfg, cols, c.seed)
	if cfg.Grid == GridNormal {
		p = p[4*len(q.levels):]
	}
	n := r1 - r0
	ng := (cols + cfg.Group - 1) / cfg.Group
	nsc := cfg.scalesPerGroup()
	codes := make([]uint8, n*cols)
	scales := make([]uint16, nsc*n*ng) // FP16 per group
	var bases []uint16                 // S8: FP16 per row
	var g8 []uint8                     // S8: one byte per group parameter
	if cfg.S8 {
		bases, g8 = make([]uint16, nsc*n), make([]uint8, nsc*n*ng)
	}
	_ = par.For(n, 1, max(1, (1<<15)/cols), c.workers, func(k0, k1 int) error {
		row, y := make([]float32, cols), make([]float32, cols)
		base := make([]uint16, 2)
		for r := k0; r < k1; r++ {
			copy(row, x[r*cols:(r+1)*cols])
			q.rotate(row)
			var mins []uint16
			if nsc == 2 {
				mins = scales[n*ng+r*ng : n*ng+(r+1)*ng]
			}
			rc := codes[r*cols : (r+1)*cols]
			q.quantRow(row, imp, rc, scales[r*ng:(r+1)*ng], mins, y)
			if cfg.S8 {
				var js []uint8
				if nsc == 2 {
					js = g8[n*ng+r*ng : n*ng+(r+1)*ng]
				}
				q.requantS8(row, scales[r*ng:(r+1)*ng], mins, base, g8[r*ng:(r+1)*ng], js, rc, y)
				bases[r] = base[0]
				if nsc == 2 {
					bases[n+r] = base[1]
				}
			}
		}
		if done != nil {
			done(int64(k1-k0) * int64(cols))
		}
		return nil
	})
	// Each parameter section holds the values of all rows, in row order:
	// these rows' share of section s starts at row r0.
	if cfg.S8 {
		for s := range nsc {
			for r := range n {
				le.PutUint16(p[2*(s*rows+r0+r):], bases[s*n+r])
			}
		}
		p = p[2*nsc*rows:]
		for s := range nsc {
			copy(p[(s*rows+r0)*ng:], g8[s*n*ng:(s+1)*n*ng])
		}
		p = p[nsc*rows*ng:]
	} else {
		for s := range nsc {
			sec := p[2*(s*rows+r0)*ng:]
			for i, v := range scales[s*n*ng : (s+1)*n*ng] {
				le.PutUint16(sec[2*i:], v)
			}
		}
		p = p[2*nsc*rows*ng:]
	}
	packBits(p[int64(r0)*int64(cols)*int64(cfg.Bits)/8:], codes, cfg.Bits)
}

// packBits writes the low b bits of each code, least significant bit
// first, as one continuous little-endian bit stream.
func packBits(dst []byte, codes []uint8, b int) {
	var acc uint64
	nacc, o := 0, 0
	for _, c := range codes {
		acc |= uint64(c) << nacc
		nacc += b
		for nacc >= 8 {
			dst[o] = byte(acc)
			o++
			acc >>= 8
			nacc -= 8
		}
	}
	if nacc > 0 {
		dst[o] = byte(acc)
	}
}

// unpackBits reads len(codes) b-bit codes starting at bit offset bit.
func unpackBits(codes []uint8, src []byte, bit int64, b int) {
	o := bit / 8
	sh := int(bit % 8)
	var acc uint64
	nacc := 0
	if sh > 0 {
		acc = uint64(src[o]) >> sh
		nacc = 8 - sh
		o++
	}
	mask := uint64(1)<<b - 1
	for i := range codes {
		for nacc < b {
			acc |= uint64(src[o]) << nacc
			o++
			nacc += 8
		}
		codes[i] = uint8(acc & mask)
		acc >>= b
		nacc -= b
	}
}

// header is a parsed payload header.
type header struct {
	cfg        Config
	rows, cols int
	hblk       int
	seed       uint32
}

func parseHeader(p []byte, t tensor.Info, version uint16) (header, error) {
	var h header
	if version < 1 || version > Version {
		return h, fmt.Errorf("%w: tenpak_x_v2 version %d (this build reads up to %d)", codec.ErrCorrupt, version, Version)
	}
	if len(p) < HeaderSize {
		return h, fmt.Errorf("%w: tenpak_x_v2 payload of %d bytes is shorter than its header", codec.ErrCorrupt, len(p))
	}
	le := binary.LittleEndian
	if p[0] != Version || p[3] > 1 {
		return h, fmt.Errorf("%w: tenpak_x_v2 header version %d, scale format %d", codec.ErrCorrupt, p[0], p[3])
	}
	h.cfg = Config{Grid: Grid(p[1]), Bits: int(p[2]), Group: int(le.Uint32(p[4:])), S8: p[3] == 1}
	if err := h.cfg.Valid(); err != nil {
		return h, fmt.Errorf("%w: %v", codec.ErrCorrupt, err)
	}
	rows, cols := t.Matrix()
	if int64(le.Uint32(p[8:])) != rows || int64(le.Uint32(p[12:])) != cols {
		return h, fmt.Errorf("%w: tenpak_x_v2 payload is %d×%d, record shape %v", codec.ErrCorrupt, le.Uint32(p[8:]), le.Uint32(p[12:]), t.Shape)
	}
	h.rows, h.cols = int(rows), int(cols)
	h.hblk = int(le.Uint32(p[16:]))
	h.seed = le.Uint32(p[20:])
	if h.hblk != 0 && (h.cfg.Grid != GridNormal || h.hblk > MaxHadamard || h.hblk&(h.hblk-1) != 0 || h.cols%h.hblk != 0) {
		return h, fmt.Errorf("%w: tenpak_x_v2 Hadamard block %d for %d columns", codec.ErrCorrupt, h.hblk, h.cols)
	}
	size, err := h.cfg.PayloadSize(h.rows, h.cols)
	if err != nil || size != int64(len(p)) {
		return h, fmt.Errorf("%w: tenpak_x_v2 payload is %d bytes, %s on %d×%d needs %d", codec.ErrCorrupt, len(p), h.cfg, h.rows, h.cols, size)
	}
	return h, nil
}

// Decode reconstructs t from payload.
func (c *Codec) Decode(dst []float32, payload []byte, t tensor.Info, version uint16) error {
	if _, _, err := checkShape(t); err != nil {
		return fmt.Errorf("%w: %v", codec.ErrCorrupt, err)
	}
	h, err := parseHeader(payload, t, version)
	if err != nil {
		return err
	}
	if int64(len(dst)) != t.Elems() {
		return fmt.Errorf("tenpak_x_v2: destination has %d values for shape %v", len(dst), t.Shape)
	}
	return c.decodeRows(dst, payload, h, 0, h.rows)
}

// DecodeRows implements codec.RowDecoder.
func (c *Codec) DecodeRows(dst []float32, payload []byte, t tensor.Info, version uint16, r0, r1 int64) error {
	if _, _, err := checkShape(t); err != nil {
		return fmt.Errorf("%w: %v", codec.ErrCorrupt, err)
	}
	h, err := parseHeader(payload, t, version)
	if err != nil {
		return err
	}
	if r0 < 0 || r0 > r1 || r1 > int64(h.rows) || int64(len(dst)) != (r1-r0)*int64(h.cols) {
		return fmt.Errorf("tenpak_x_v2: rows [%d, %d) of %d into %d values", r0, r1, h.rows, len(dst))
	}
	return c.decodeRows(dst, payload, h, int(r0), int(r1))
}

// decodeRows decodes rows [r0, r1) of a payload with header h into dst.
func (c *Codec) decodeRows(dst []float32, payload []byte, h header, r0, r1 int) error {
	le := binary.LittleEndian
	p := payload[HeaderSize:]
	cfg, rows, cols := h.cfg, h.rows, h.cols
	if cfg.Grid == GridHalf {
		p = p[2*r0*cols:]
		for i := range dst {
			dst[i] = tensor.HalfToFloat(le.Uint16(p[2*i:]))
		}
		return nil
	}
	q := &quantizer{cfg: cfg, hblk: h.hblk}
	if cfg.Grid == GridNormal {
		lv := make([]float32, 1<<cfg.Bits)
		for i := range lv {
			lv[i] = math.Float32frombits(le.Uint32(p[4*i:]))
			if math.IsNaN(float64(lv[i])) || math.IsInf(float64(lv[i]), 0) {
				return fmt.Errorf("%w: tenpak_x_v2 level %d is %v", codec.ErrCorrupt, i, lv[i])
			}
		}
		q.levels = lv
		p = p[4*len(lv):]
		if h.hblk > 0 {
			q.signs = signs(cols, h.seed)
		}
	}
	ng := (cols + cfg.Group - 1) / cfg.Group
	nsc := cfg.scalesPerGroup()
	var params, codesBytes []byte
	if cfg.S8 {
		params, codesBytes = p[:nsc*(2*rows+rows*ng)], p[nsc*(2*rows+rows*ng):]
	} else {
		params, codesBytes = p[:2*nsc*rows*ng], p[2*nsc*rows*ng:]
	}
	return par.For(r1-r0, 1, max(1, (1<<15)/cols), c.workers, func(k0, k1 int) error {
		codes := make([]uint8, cols)
		sc, mins := make([]float32, ng), make([]float32, ng)
		for r := r0 + k0; r < r0+k1; r++ {
			if cfg.S8 {
				g8 := params[2*nsc*rows:]
				S := tensor.HalfToFloat(le.Uint16(params[2*r:]))
				for i := range sc {
					sc[i] = s8Scale(S, g8[r*ng+i])
				}
				if nsc == 2 {
					M := tensor.HalfToFloat(le.Uint16(params[2*(rows+r):]))
					for i := range mins {
						mins[i] = s8Min(M, g8[rows*ng+r*ng+i])
					}
				}
			} else {
				for i := range sc {
					sc[i] = tensor.HalfToFloat(le.Uint16(params[2*(r*ng+i):]))
					if nsc == 2 {
						mins[i] = tensor.HalfToFloat(le.Uint16(params[2*(rows*ng+r*ng+i):]))
					}
				}
			}
			for i := range sc {
				if !finite(sc[i]) || (nsc == 2 && !finite(mins[i])) {
					return fmt.Errorf("%w: tenpak_x_v2 row %d group %d: scale %v, minimum %v", codec.ErrCorrupt, r, i, sc[i], mins[i])
				}
			}
			unpackBits(codes, codesBytes, int64(r)*int64(cols)*int64(cfg.Bits), cfg.Bits)
			y := dst[(r-r0)*cols : (r-r0+1)*cols]
			q.decodeRow(codes, sc, mins, y)
			q.unrotate(y)
		}
		return nil
	})
}

func finite(v float32) bool { return !math.IsNaN(float64(v)) && !math.IsInf(float64(v), 0) }

// Distortions codes the sample rows x (n×cols, row-major: whole rows of a
// tensor) with each of cfgs and returns, per Config, the squared error
// Σ imp[c]·(x − x̂)² over the sample (imp nil: all 1). It is what package
// rate uses to estimate each candidate's error; it writes no payload.
func Distortions(x []float32, cols int, imp []float32, cfgs []Config, seed uint32) []float64 {
	out := make([]float64, len(cfgs))
	n := len(x) / cols
	row, y := make([]float32, cols), make([]float32, cols)
	codes := make([]uint8, cols)
	for k, cfg := range cfgs {
		if cfg.Grid == GridHalf {
			for i, v := range x {
				y[i%cols] = tensor.RoundHalf(v)
				if i%cols == cols-1 {
					r := i / cols
					out[k] += sqerr(x[r*cols:(r+1)*cols], y, imp)
				}
			}
			continue
		}
		q := newQuantizer(cfg, cols, DefaultSeed^seed)
		ng := (cols + cfg.Group - 1) / cfg.Group
		scales, mins := make([]uint16, ng), make([]uint16, ng)
		ks, js, base := make([]uint8, ng), make([]uint8, ng), make([]uint16, 2)
		w := imp
		if cfg.Grid == GridNormal {
			w = nil
		}
		for r := 0; r < n; r++ {
			src := x[r*cols : (r+1)*cols]
			copy(row, src)
			q.rotate(row)
			q.quantRow(row, w, codes, scales, mins, y)
			if cfg.S8 {
				q.requantS8(row, scales, mins, base, ks, js, codes, y)
			}
			q.unrotate(y)
			out[k] += sqerr(src, y, imp)
		}
	}
	return out
}
