// Package tenpakx3 implements the tenpak_x_v3 codec (TenPak-X v3):
// entropy-coded scalar quantization with one step per tensor.
//
// A tensor, seen as a rows×cols matrix, is coded with one step
// Δ = S·2^(−k/8)·f (k the Config, S = sqrt(π/2)·mean|x| the tensor's
// scale, f = 1 unless a size cap coarsens it; with column importance,
// column c's step is Δ·2^(j_c/16)). Each
// weight becomes a signed index q whose magnitude m is chosen, among the
// two nearest levels and 0, to minimise (t − level(m))² + c·bits(q) with
// t = |x|/Δ_c (rate–distortion optimised rounding, which gives a deadzone);
// the decoder reconstructs x̂ = sign(q)·(m − θ_m)·Δ_c with per-tensor
// centroid offsets θ. The indices, zigzag-mapped, are split into a high
// part coded with github.com/klauspost/compress/fse (one block per context
// — a class of rows by RMS — and row group, with escapes for outliers) and
// raw low bits. Row groups decode independently, in parallel and by rows
// (codec.RowDecoder), and a tensor larger than the pipeline's budget is
// encoded from windows of its rows (codec.StreamEncoder, stream.go).
//
// Rate control (package rate) chooses k per tensor through codec.Planner
// and codec.SizeEstimator; the planned codec coarsens a tensor's step
// until its payload fits the size rate control allotted it. The payload
// layout is specified in formats/tpk/CODECS.md.
package tenpakx3

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/klauspost/compress/fse"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/codec/internal/par"
	"github.com/tpconvert/tpconvert/tensor"
)

// Format constants.
const (
	// Version is the payload version (record version and first byte).
	Version = 1
	// HeaderSize is the size of the fixed header in bytes.
	HeaderSize = 40
	// MaxClasses is the largest number of row or column classes.
	MaxClasses = 4
	// MaxShift is the largest number of raw low bits per weight.
	MaxShift = 24
	// maxMag bounds a decoded magnitude (2^40).
	maxMag = 1 << 40
)

// Block modes of a context's symbols in a row group.
const (
	modeFSE = 0
	modeRLE = 1
	modeRaw = 2
)

// GroupWeights is the number of weights the encoder puts in a row group
// (whole rows, at least one).
var GroupWeights = 1 << 20

// Config is the step exponent k: Δ = S·2^(−k/8), with the tensor's scale
// S = sqrt(π/2)·mean|x| (its RMS if the weights are Gaussian).
type Config struct {
	K int
}

// MinK and MaxK bound the step exponents (about 0.3 to 10 bits per weight
// on Gaussian weights).
const (
	MinK = -16
	MaxK = 72
)

// String returns "k=K".
func (c Config) String() string { return "k=" + strconv.Itoa(c.K) }

// Valid reports whether k is within [MinK, MaxK].
func (c Config) Valid() error {
	if c.K < MinK || c.K > MaxK {
		return fmt.Errorf("tenpak_x_v3: step exponent k=%d outside [%d, %d]", c.K, MinK, MaxK)
	}
	return nil
}

// ParseConfig parses "k=K".
func ParseConfig(s string) (Config, error) {
	v, ok := strings.CutPrefix(s, "k=")
	k, err := strconv.Atoi(v)
	if !ok || err != nil {
		return Config{}, fmt.Errorf("tenpak_x_v3: configuration %q, want k=K", s)
	}
	c := Config{K: k}
	return c, c.Valid()
}

// DefaultConfig codes tensors that have no entry in the plan (about 4.4
// bits per Gaussian weight).
var DefaultConfig = Config{K: 20}

func init() {
	codec.Register(codec.IDTenpakXV3, "tenpak_x_v3",
		"TenPak-X v3: one step per tensor, rate–distortion optimised rounding, FSE-coded indices; sized by rate control for --bpw/--target-size", New)
}

// Codec is the tenpak_x_v3 codec.
type Codec struct {
	plan    map[string]Config
	imp     map[string][]float32
	bytes   map[string]int64
	workers int
	summary string
	ncls    [2]int
	dflt    Config
	used    *sync.Map // tensor name → string (the step used)
}

// New returns the codec with an empty plan (decoding, or encoding every
// tensor with DefaultConfig). It takes o.Workers; Seed is unused (the
// coding makes no random choice).
func New(o codec.Options) (codec.Codec, error) {
	if err := o.Only("tenpak_x_v3", 0); err != nil {
		return nil, err
	}
	return &Codec{workers: o.PerTensor(), ncls: Classes, dflt: DefaultConfig, used: new(sync.Map)}, nil
}

// NewFixed returns the codec that codes every tensor with cfg (for
// measurements that need no rate control).
func NewFixed(cfg Config) (*Codec, error) {
	if err := cfg.Valid(); err != nil {
		return nil, err
	}
	c, _ := New(codec.Options{})
	cc := c.(*Codec)
	cc.dflt = cfg
	return cc, nil
}

// NewPlanned returns the codec that codes each tensor named in plan with
// its Config, its column steps set by imp[name] when present and its
// payload capped at limit[name] bytes when present.
func NewPlanned(plan map[string]Config, imp map[string][]float32, limit map[string]int64, summary string) *Codec {
	c, _ := New(codec.Options{})
	cc := c.(*Codec)
	cc.plan, cc.imp, cc.bytes, cc.summary = plan, imp, limit, summary
	return cc
}

// SetWorkers sets the goroutines Encode and Decode use per tensor.
func (c *Codec) SetWorkers(n int) { c.workers = max(n, 1) }

// ID returns codec.IDTenpakXV3.
func (*Codec) ID() uint16 { return codec.IDTenpakXV3 }

// Name returns "tenpak_x_v3".
func (*Codec) Name() string { return "tenpak_x_v3" }

// Version returns the payload version.
func (*Codec) Version() uint16 { return Version }

// Params describes the plan.
func (c *Codec) Params() string {
	if c.summary != "" {
		return c.summary
	}
	return "config=" + c.dflt.String()
}

// TensorParams returns t's Config ("k=20") and, once t is encoded with a
// step coarser than its Config because of a size cap, the coarsening in
// 64ths of an octave ("k=20 c=3": the step is 2^(3/64) times k's).
func (c *Codec) TensorParams(t tensor.Info) string {
	if v, ok := c.used.Load(t.Name); ok {
		return v.(string)
	}
	return c.config(t).String()
}

// MaxRelErr implements codec.ErrorBounder: 2·2^(−k/8), at most 1, and 1
// for a tensor whose size is capped (its step may be coarser). No
// reconstruction is worse than zeros: the offsets are centroids.
func (c *Codec) MaxRelErr(t tensor.Info) float64 {
	if _, ok := c.bytes[t.Name]; ok {
		return 1
	}
	return math.Min(1, 2*math.Exp2(-float64(c.config(t).K)/8))
}

func (c *Codec) config(t tensor.Info) Config {
	if cfg, ok := c.plan[t.Name]; ok {
		return cfg
	}
	return c.dflt
}

// Cost returns the working memory of Encode or Decode beyond input and
// output: the payload (at most about 2 bytes per weight) and the symbol
// buffers of the row groups in flight.
func (c *Codec) Cost(t tensor.Info) int64 {
	_, cols := t.Matrix()
	g := int64(GroupWeights) + cols
	return 2*t.Elems() + int64(c.workers)*6*g + 1<<20
}

func checkShape(t tensor.Info) (rows, cols int, err error) {
	r, cl := t.Matrix()
	if r <= 0 || cl <= 0 || r > math.MaxUint32 || cl > math.MaxUint32 || t.Elems() > tensor.MaxElems {
		return 0, 0, fmt.Errorf("%w: tenpak_x_v3 needs a non-empty matrix, got shape %v", codec.ErrUnsupported, t.Shape)
	}
	return int(r), int(cl), nil
}

// MaxAbs is the largest magnitude the codec accepts (a reconstruction
// a little above a value near the float32 maximum would overflow).
const MaxAbs = 1e37

// CheckFinite returns an error wrapping codec.ErrUnsupported if x holds a
// value that is not finite or exceeds MaxAbs in magnitude.
func CheckFinite(x []float32) error { return checkFinite(x, 0) }

// checkFinite is CheckFinite of the elements of a tensor from off.
func checkFinite(x []float32, off int64) error {
	for k, v := range x {
		// |v| ≤ MaxAbs, on the bits: for non-negative float32s (NaN
		// and ±Inf above them) the order of the bits is that of the
		// values.
		if math.Float32bits(v)&0x7fffffff > maxAbsBits {
			return fmt.Errorf("%w: element %d is %g (finite values up to %g only)", codec.ErrUnsupported, off+int64(k), v, MaxAbs)
		}
	}
	return nil
}

// maxAbsBits is the bits of the largest float32 ≤ MaxAbs.
var maxAbsBits = func() uint32 {
	v := float32(MaxAbs)
	if float64(v) > MaxAbs {
		v = math.Nextafter32(v, 0)
	}
	return math.Float32bits(v)
}()

// job is what a tensor's coding takes from the plan.
type job struct {
	cfg    Config
	jcol   []int8
	limit  int64
	capped bool
}

func (c *Codec) job(t tensor.Info, cols int) (job, error) {
	cfg := c.config(t)
	if err := cfg.Valid(); err != nil {
		return job{}, err
	}
	imp := c.imp[t.Name]
	if len(imp) != cols {
		imp = nil
	}
	limit, capped := c.bytes[t.Name]
	return job{cfg: cfg, jcol: colExps(imp), limit: limit, capped: capped}, nil
}

// Encode writes t's payload under its planned Config (and size cap).
func (c *Codec) Encode(w io.Writer, t tensor.Info, x []float32) error {
	rows, cols, err := checkShape(t)
	if err != nil {
		return err
	}
	if int64(len(x)) != t.Elems() {
		return fmt.Errorf("tenpak_x_v3: %d values for shape %v", len(x), t.Shape)
	}
	if err := CheckFinite(x); err != nil {
		return fmt.Errorf("tenpak_x_v3: tensor %q: %w", t.Name, err)
	}
	j, err := c.job(t, cols)
	if err != nil {
		return err
	}
	m := &matrix{rows: rows, cols: cols, x: x, win: rows}
	res, err := c.encodeFit(m, prepare(x, rows, cols, j.jcol, c.ncls, c.workers), j, t)
	if err != nil {
		return err
	}
	if _, err := w.Write(res.hdr); err != nil {
		return err
	}
	for _, d := range res.data {
		if _, err := w.Write(d); err != nil {
			return err
		}
	}
	return nil
}

// encodeFit codes m under j, coarsening the step until the payload fits
// j's cap, and records the step used for TensorParams.
func (c *Codec) encodeFit(m *matrix, pr *prep, j job, t tensor.Info) (*encoded, error) {
	res, err := m.encode(pr, j.cfg.K, 1, c.workers)
	if err == nil && j.capped && res.size > j.limit {
		res, err = fit(res, j.limit, func(lf float64) (*encoded, error) {
			return m.encode(pr, j.cfg.K, math.Exp2(lf), c.workers)
		}, float64(m.rows)*float64(m.cols))
	}
	if err != nil {
		return nil, fmt.Errorf("tenpak_x_v3: tensor %q: %w", t.Name, err)
	}
	// The params stay short (rate control bounds a record's overhead by
	// its Config's length and a little slack): the step is in the
	// payload, the error in the record's statistics.
	s := j.cfg.String()
	if res.lf != 0 {
		s = fmt.Sprintf("%s c=%d", s, int(math.Round(64*res.lf)))
	}
	c.used.Store(t.Name, s)
	return res, nil
}

// fit coarsens the step by factors 2^(n/64) until the payload fits limit
// bytes, aiming within 0.5 % below it: a secant search on log2 of the
// factor (about one bit per weight less per doubling of the step), at
// most 16 codings. enc codes with log2 factor lf; first is lf = 0.
func fit(first *encoded, limit int64, enc func(lf float64) (*encoded, error), n float64) (*encoded, error) {
	var best *encoded
	lo, hi := 0.0, math.Inf(1) // lf too fine, lf that fits
	cur, prev := first, (*encoded)(nil)
	for range 16 {
		size := float64(cur.size)
		if cur.size <= limit {
			hi = math.Min(hi, cur.lf)
			if best == nil || cur.size > best.size {
				best = cur
			}
			if size >= 0.995*float64(limit) {
				break
			}
		} else {
			lo = math.Max(lo, cur.lf)
		}
		slope := n / 8 // bytes per unit of lf
		if prev != nil && prev.lf != cur.lf {
			if s := (float64(prev.size) - size) / (cur.lf - prev.lf); s > 0 {
				slope = s
			}
		}
		next := cur.lf + (size-0.998*float64(limit))/slope
		next = math.Round(next*64) / 64
		if !(next > lo && next < hi) {
			if math.IsInf(hi, 1) {
				next = lo + math.Max(1.0/64, 2*(lo-cur.lf+1.0/64))
			} else {
				next = math.Round((lo+hi)*32) / 64
			}
		}
		if next <= lo || next >= hi {
			break
		}
		r, err := enc(next)
		if err != nil {
			return nil, err
		}
		r.lf = next
		prev, cur = cur, r
	}
	if best == nil {
		return nil, fmt.Errorf("%w: cannot fit the %d bytes allotted (smallest payload tried %d)", codec.ErrUnsupported, limit, cur.size)
	}
	return best, nil
}

// encoded is one coding of a tensor: its header (with the group table),
// its groups' bytes (held, kept in the spill, or neither) and figures.
type encoded struct {
	p       *params
	hdr     []byte
	data    [][]byte // per group, when held (Encode)
	lens    []int
	size    int64   // the payload's bytes
	offs    []int64 // the spill offset of each group (spilled)
	spilled bool    // every group is in the spill
	lf      float64 // log2 of the step factor
}

// groupOut is one row group's coded bytes and the sums of its centroids.
type groupOut struct {
	data []byte
	bins binSums
}

// matrix gives a tensor's rows to the coding passes: all of them in
// memory (Encode), or read from a codec.RowSource a window at a time
// (EncodeStream), the rows the step's statistics sample gathered once.
type matrix struct {
	rows, cols int
	x          []float32 // all values, or nil
	win        int       // rows per window: a multiple of a group's rows
	// Streamed only.
	ctx      context.Context
	src      codec.RowSource
	buf      []float32 // a window's values
	sample   []float32 // rows 0, stride, 2·stride, …
	stride   int
	spill    codec.Spill
	spillOK  atomic.Bool
	spillEnd int64 // the spill's bytes written so far
	attempts int64
	done     func(elems int64)
}

// window returns the values of rows [r0, r1).
func (m *matrix) window(r0, r1 int) ([]float32, error) {
	if m.x != nil {
		return m.x[r0*m.cols : r1*m.cols], nil
	}
	if err := m.ctx.Err(); err != nil {
		return nil, err
	}
	b := m.buf[:(r1-r0)*m.cols]
	return b, m.src.Rows(b, int64(r0), int64(r1))
}

// row returns row r of the statistics' sample (r a multiple of the
// stride when streamed).
func (m *matrix) row(r int) []float32 {
	if m.x != nil {
		return m.x[r*m.cols : (r+1)*m.cols]
	}
	i := r / m.stride
	return m.sample[i*m.cols : (i+1)*m.cols]
}

// encode codes the matrix with step exponent k and step factor f.
func (m *matrix) encode(pr *prep, k int, f float64, workers int) (*encoded, error) {
	rows, cols := m.rows, m.cols
	p, ok := analyze(m.row, pr, rows, k, f, statStride(rows, cols), workers)
	if !ok {
		return nil, fmt.Errorf("%w: the step of k=%d is not a normal float32 (RMS too small or too large)", codec.ErrUnsupported, k)
	}
	rpg := groupRows(cols)
	ng := (rows + rpg - 1) / rpg
	e := &encoded{p: p, lens: make([]int, ng)}
	if m.x != nil {
		e.data = make([][]byte, ng)
	}
	var held [][]byte // a streamed window's groups, until they are spilled
	if m.spill != nil && m.spillOK.Load() {
		e.spilled, e.offs, held = true, make([]int64, ng), make([][]byte, ng)
	}
	first := m.attempts == 0
	m.attempts++
	bins := make([]binSums, ng)
	for w0 := 0; w0 < rows; w0 += m.win {
		w1 := min(rows, w0+m.win)
		x, err := m.window(w0, w1)
		if err != nil {
			return nil, err
		}
		g0, g1 := w0/rpg, (w1+rpg-1)/rpg
		err = par.For(g1-g0, 1, 1, workers, func(a, b int) error {
			var sc fse.Scratch
			for g := g0 + a; g < g0+b; g++ {
				r0, r1 := g*rpg, min(rows, (g+1)*rpg)
				out, err := p.codeGroup(x[(r0-w0)*cols:(r1-w0)*cols], r0, r1, &sc)
				if err != nil {
					return err
				}
				e.lens[g], bins[g] = len(out.data), out.bins
				switch {
				case e.data != nil:
					e.data[g] = out.data
				case e.spilled:
					held[g] = out.data
				}
				if first && m.done != nil {
					m.done(int64(r1-r0) * int64(cols))
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if e.spilled {
			m.keep(e, held, g0, g1)
		}
	}
	e.spilled = e.spilled && m.spillOK.Load()
	var sum binSums
	for g := range bins {
		sum.add(&bins[g])
	}
	p.theta = sum.thetas()
	hdr := p.header(k, ng, rpg)
	le := binary.LittleEndian
	e.size = int64(len(hdr)) + 4*int64(ng)
	for _, n := range e.lens {
		hdr = le.AppendUint32(hdr, uint32(n))
		e.size += int64(n)
	}
	e.hdr = hdr
	return e, nil
}

// keep writes groups [g0, g1) to the end of the spill, one after the
// other, and lets them go; a spill that fails is given up.
func (m *matrix) keep(e *encoded, held [][]byte, g0, g1 int) {
	for g := g0; g < g1; g++ {
		if m.spillOK.Load() {
			if _, err := m.spill.WriteAt(held[g], m.spillEnd); err != nil {
				m.spillOK.Store(false)
			}
		}
		e.offs[g] = m.spillEnd
		m.spillEnd += int64(len(held[g]))
		held[g] = nil
	}
}

// header returns the fixed header, θ, column exponents and class ids.
func (p *params) header(k, ng, rpg int) []byte {
	le := binary.LittleEndian
	h := make([]byte, HeaderSize, HeaderSize+p.cols+p.rows/4+p.cols/4+2+4*ng)
	h[0] = Version
	if p.jcol != nil {
		h[1] = 1
	}
	h[2], h[3] = byte(p.nrc), byte(p.ncc)
	le.PutUint32(h[4:], uint32(p.rows))
	le.PutUint32(h[8:], uint32(p.cols))
	h[12] = byte(int8(k))
	h[13] = byte(p.shift)
	h[14] = NTheta
	le.PutUint32(h[16:], math.Float32bits(p.step))
	le.PutUint32(h[20:], math.Float32bits(p.scale))
	le.PutUint32(h[24:], uint32(rpg))
	le.PutUint32(h[28:], uint32(ng))
	for i, th := range p.theta {
		h[32+i] = byte(th)
	}
	for _, j := range p.jcol {
		h = append(h, byte(j))
	}
	h = appendClasses(h, p.rcls, p.nrc)
	h = appendClasses(h, p.ccls, p.ncc)
	return h
}

// appendClasses packs class ids two bits each, least significant first
// (nothing for a single class).
func appendClasses(h []byte, cls []uint8, nc int) []byte {
	if nc <= 1 {
		return h
	}
	for i := 0; i < len(cls); i += 4 {
		var b byte
		for j := i; j < min(i+4, len(cls)); j++ {
			b |= cls[j] << (2 * (j - i))
		}
		h = append(h, b)
	}
	return h
}

// codeGroup quantizes and codes rows [r0, r1), whose values are x.
func (p *params) codeGroup(x []float32, r0, r1 int, sc *fse.Scratch) (groupOut, error) {
	q := p.quantGroup(x, r0, r1)
	if q.tooLarge {
		return groupOut{}, fmt.Errorf("%w: a weight is more than 2^40 steps from zero (an extreme outlier)", codec.ErrUnsupported)
	}
	var out []byte
	for k := range q.syms {
		if len(q.syms[k]) == 0 {
			continue
		}
		var err error
		if out, err = appendBlock(out, q.syms[k], sc); err != nil {
			return groupOut{}, err
		}
	}
	out = binary.AppendUvarint(out, uint64(len(q.esc)))
	out = append(out, q.esc...)
	out = append(out, q.low...)
	return groupOut{data: out, bins: q.bins}, nil
}

// quantized is a row group's symbols per context, escape stream and raw
// low bits, before entropy coding.
type quantized struct {
	syms [][]byte
	esc  []byte
	low  []byte
	bins binSums
	// tooLarge is set when a magnitude exceeds 2^40 (maxMag).
	tooLarge bool
}

// quantGroup quantizes rows [r0, r1), whose values are x.
func (p *params) quantGroup(x []float32, r0, r1 int) *quantized {
	nctx := p.nrc * p.ncc
	n := (r1 - r0) * p.cols
	cnt := p.counts(r0, r1)
	q := &quantized{syms: make([][]byte, nctx)}
	// Each context's symbols go to its part of one buffer: its weights
	// are counted beforehand.
	all := make([]byte, n)
	var pos [maxCtx]int
	off := 0
	for k := range nctx {
		q.syms[k] = all[off : off+cnt[k] : off+cnt[k]]
		pos[k] = off
		off += cnt[k]
	}
	// The raw bits, least significant first: s + 1 per weight that is not
	// 0, s per 0, flushed 32 bits at a time (s ≤ MaxShift = 24: the
	// accumulator never holds more than 31 + 25 bits).
	low := make([]byte, 0, (uint64(n)*uint64(p.shift+1)+7)/8+8)
	var acc uint64
	var nacc uint
	b := &q.bins
	shift := p.shift
	smask := uint64(1)<<shift - 1
	w1 := shift + 1
	cols, ccls, inv := p.cols, p.ccls, p.inv[:p.cols]
	for r := r0; r < r1; r++ {
		base := p.rowBase(r)
		for c, v := range x[(r-r0)*cols : (r-r0+1)*cols] {
			t := math.Abs(float64(v) * float64(inv[c]))
			k := base
			if ccls != nil {
				k += int(ccls[c])
			}
			m := p.round(t, k)
			if m == 0 {
				all[pos[k]] = 0
				pos[k]++
				nacc += shift
			} else {
				if m > maxMag {
					q.tooLarge = true
					m = maxMag
				}
				mu := uint64(m)
				hi := mu >> shift
				if hi >= escSym {
					all[pos[k]] = escSym
					q.esc = binary.AppendUvarint(q.esc, hi-escSym)
				} else {
					all[pos[k]] = byte(hi)
				}
				pos[k]++
				// The low bits, then the sign.
				sign := uint64(0)
				if v < 0 {
					sign = 1
				}
				acc |= (mu&smask | sign<<shift) << nacc
				nacc += w1
				i := bin(m)
				b.w[i]++
				b.d[i] += m - t
			}
			if nacc >= 32 {
				low = binary.LittleEndian.AppendUint32(low, uint32(acc))
				acc >>= 32
				nacc -= 32
			}
		}
	}
	for ; nacc > 0; nacc -= min(nacc, 8) {
		low = append(low, byte(acc))
		acc >>= 8
	}
	q.low = low
	return q
}

// counts returns the number of weights of each context in rows [r0, r1).
func (p *params) counts(r0, r1 int) []int {
	rc := make([]int, p.nrc)
	for r := r0; r < r1; r++ {
		if p.rcls != nil {
			rc[p.rcls[r]]++
		} else {
			rc[0]++
		}
	}
	cc := make([]int, p.ncc)
	for c := range p.cols {
		if p.ccls != nil {
			cc[p.ccls[c]]++
		} else {
			cc[0]++
		}
	}
	out := make([]int, p.nrc*p.ncc)
	for a := range p.nrc {
		for b := range p.ncc {
			out[a*p.ncc+b] = rc[a] * cc[b]
		}
	}
	return out
}

// appendBlock appends one context's symbols: FSE, or one symbol (RLE), or
// raw bytes when FSE does not pay.
func appendBlock(out, syms []byte, sc *fse.Scratch) ([]byte, error) {
	sc.TableLog = 12
	sc.Out = nil
	enc, err := fse.Compress(syms, sc)
	switch {
	case errors.Is(err, fse.ErrUseRLE):
		return append(out, modeRLE, syms[0]), nil
	case errors.Is(err, fse.ErrIncompressible) || (err == nil && len(enc)+binary.MaxVarintLen32 >= len(syms)):
		if len(syms) == 1 || allSame(syms) {
			return append(out, modeRLE, syms[0]), nil
		}
		out = append(out, modeRaw)
		return append(out, syms...), nil
	case err != nil:
		return nil, fmt.Errorf("fse: %w", err)
	}
	out = append(out, modeFSE)
	out = binary.AppendUvarint(out, uint64(len(enc)))
	return append(out, enc...), nil
}

func allSame(b []byte) bool {
	for _, v := range b {
		if v != b[0] {
			return false
		}
	}
	return true
}

// bitReader reads values packed least significant bit first (the raw
// bits quantGroup writes), refusing to read past its bytes.
type bitReader struct {
	src  []byte
	i    int
	acc  uint64
	nacc uint
}

// fill loads whole bytes into the accumulator, eight at a time while
// eight remain, until it holds more than 56 bits or the bytes run out.
func (b *bitReader) fill() {
	if b.i+8 <= len(b.src) {
		n := (63 - b.nacc) >> 3 // whole bytes that fit
		v := binary.LittleEndian.Uint64(b.src[b.i:]) & (uint64(1)<<(8*n) - 1)
		b.acc |= v << b.nacc
		b.i += int(n)
		b.nacc += 8 * n
		return
	}
	for b.nacc <= 56 && b.i < len(b.src) {
		b.acc |= uint64(b.src[b.i]) << b.nacc
		b.i++
		b.nacc += 8
	}
}

// header is a parsed payload.
type header struct {
	rows, cols int
	nrc, ncc   int
	k          int
	shift      uint
	step       float32
	theta      [NTheta]int8
	jcol       []int8
	rcls, ccls []uint8
	rpg, ng    int
	groups     [][]byte
}

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: tenpak_x_v3 "+format, append([]any{codec.ErrCorrupt}, a...)...)
}

// parse checks the whole header and the group table of payload p for t.
func parse(p []byte, t tensor.Info, version uint16) (*header, error) {
	h, tab, q, err := parseHeader(p, t, version)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	h.groups = make([][]byte, h.ng)
	for g := range h.ng {
		n := uint64(le.Uint32(tab[4*g:]))
		if n > uint64(len(q)) {
			return nil, corrupt("group %d of %d bytes, %d left", g, n, len(q))
		}
		h.groups[g], q = q[:n], q[n:]
	}
	if len(q) != 0 {
		return nil, corrupt("%d bytes after the last group", len(q))
	}
	return h, nil
}

// parseHeader checks the header of payload p for t (fixed header, column
// exponents, class ids, group table), and returns it, the group table and
// the bytes after it.
func parseHeader(p []byte, t tensor.Info, version uint16) (*header, []byte, []byte, error) {
	if version < 1 || version > Version {
		return nil, nil, nil, corrupt("version %d (this build reads up to %d)", version, Version)
	}
	if _, _, err := checkShape(t); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: %v", codec.ErrCorrupt, err)
	}
	if len(p) < HeaderSize {
		return nil, nil, nil, corrupt("payload of %d bytes is shorter than its header", len(p))
	}
	le := binary.LittleEndian
	h := &header{nrc: int(p[2]), ncc: int(p[3]), k: int(int8(p[12])), shift: uint(p[13])}
	if p[0] != Version || p[1] > 1 || p[14] != NTheta || p[15] != 0 {
		return nil, nil, nil, corrupt("header version %d, flags %d, %d offsets, reserved %d", p[0], p[1], p[14], p[15])
	}
	rows, cols := t.Matrix()
	if int64(le.Uint32(p[4:])) != rows || int64(le.Uint32(p[8:])) != cols {
		return nil, nil, nil, corrupt("payload is %d×%d, record shape %v", le.Uint32(p[4:]), le.Uint32(p[8:]), t.Shape)
	}
	h.rows, h.cols = int(rows), int(cols)
	if h.nrc < 1 || h.nrc > MaxClasses || h.ncc < 1 || h.ncc > MaxClasses || h.nrc > h.rows || h.ncc > h.cols || h.shift > MaxShift {
		return nil, nil, nil, corrupt("%d row classes, %d column classes, %d raw bits", h.nrc, h.ncc, h.shift)
	}
	h.step = math.Float32frombits(le.Uint32(p[16:]))
	if !(h.step > 0) || math.IsInf(float64(h.step), 0) {
		return nil, nil, nil, corrupt("step %v", h.step)
	}
	h.rpg, h.ng = int(le.Uint32(p[24:])), int(le.Uint32(p[28:]))
	if h.rpg < 1 || h.ng != (h.rows+h.rpg-1)/h.rpg {
		return nil, nil, nil, corrupt("%d groups of %d rows for %d rows", h.ng, h.rpg, h.rows)
	}
	for i := range h.theta {
		h.theta[i] = int8(p[32+i])
	}
	q := p[HeaderSize:]
	if p[1] == 1 {
		if len(q) < h.cols {
			return nil, nil, nil, corrupt("payload too short for its column steps")
		}
		h.jcol = make([]int8, h.cols)
		for i := range h.jcol {
			h.jcol[i] = int8(q[i])
		}
		q = q[h.cols:]
	}
	var err error
	if h.rcls, q, err = readClasses(q, h.rows, h.nrc); err != nil {
		return nil, nil, nil, err
	}
	if h.ccls, q, err = readClasses(q, h.cols, h.ncc); err != nil {
		return nil, nil, nil, err
	}
	if uint64(len(q)) < 4*uint64(h.ng) {
		return nil, nil, nil, corrupt("payload too short for %d group lengths", h.ng)
	}
	return h, q[:4*h.ng], q[4*h.ng:], nil
}

// readClasses reads n class ids below nc (none when nc is 1).
func readClasses(q []byte, n, nc int) ([]uint8, []byte, error) {
	if nc <= 1 {
		return nil, q, nil
	}
	nb := (n + 3) / 4
	if len(q) < nb {
		return nil, nil, corrupt("payload too short for %d class ids", n)
	}
	cls := make([]uint8, n)
	for i := range cls {
		cls[i] = q[i/4] >> (2 * (i % 4)) & 3
		if int(cls[i]) >= nc {
			return nil, nil, corrupt("class %d of %d", cls[i], nc)
		}
	}
	if n%4 != 0 && q[nb-1]>>(2*(n%4)) != 0 {
		return nil, nil, corrupt("class padding bits set")
	}
	return cls, q[nb:], nil
}

// Decode reconstructs t from payload.
func (c *Codec) Decode(dst []float32, payload []byte, t tensor.Info, version uint16) error {
	h, err := parse(payload, t, version)
	if err != nil {
		return err
	}
	if int64(len(dst)) != t.Elems() {
		return fmt.Errorf("tenpak_x_v3: destination has %d values for shape %v", len(dst), t.Shape)
	}
	return c.decodeRows(dst, h, 0, h.rows)
}

// DecodeRows implements codec.RowDecoder: it decodes only the row groups
// that hold rows [r0, r1).
func (c *Codec) DecodeRows(dst []float32, payload []byte, t tensor.Info, version uint16, r0, r1 int64) error {
	h, err := parse(payload, t, version)
	if err != nil {
		return err
	}
	if r0 < 0 || r0 > r1 || r1 > int64(h.rows) || int64(len(dst)) != (r1-r0)*int64(h.cols) {
		return fmt.Errorf("tenpak_x_v3: rows [%d, %d) of %d into %d values", r0, r1, h.rows, len(dst))
	}
	return c.decodeRows(dst, h, int(r0), int(r1))
}

// decoder returns the params and reconstruction levels that decode the
// groups of h.
func (h *header) decoder() (*params, recon, error) {
	p := &params{rows: h.rows, cols: h.cols, step: h.step, jcol: h.jcol, nrc: h.nrc, ncc: h.ncc, rcls: h.rcls, ccls: h.ccls, shift: h.shift}
	p.setSteps()
	for _, s := range p.stepc {
		if !(s > 0) || math.IsInf(float64(s), 0) {
			return nil, recon{}, corrupt("column step %v", s)
		}
	}
	return p, newRecon(h.theta), nil
}

// readBlock reads one context block of n symbols, an FSE block's into
// the memory of into when it is large enough.
func readBlock(q []byte, n int, sc *fse.Scratch, into []byte) ([]byte, []byte, error) {
	if len(q) < 1 {
		return nil, nil, corrupt("missing block")
	}
	mode := q[0]
	q = q[1:]
	switch mode {
	case modeRLE:
		if len(q) < 1 {
			return nil, nil, corrupt("missing RLE symbol")
		}
		return bytes.Repeat(q[:1], n), q[1:], nil
	case modeRaw:
		if len(q) < n {
			return nil, nil, corrupt("raw block of %d symbols, %d bytes left", n, len(q))
		}
		return q[:n], q[n:], nil
	case modeFSE:
		l, m := binary.Uvarint(q)
		if m <= 0 || l > uint64(len(q)-m) {
			return nil, nil, corrupt("FSE block length")
		}
		blk := q[m : m+int(l)]
		sc.DecompressLimit = n
		sc.Out = into[:0]
		out, err := fse.Decompress(blk, sc)
		if err != nil {
			return nil, nil, corrupt("FSE block: %v", err)
		}
		if len(out) != n {
			return nil, nil, corrupt("FSE block of %d symbols, want %d", len(out), n)
		}
		return out, q[m+int(l):], nil
	}
	return nil, nil, corrupt("block mode %d", mode)
}
