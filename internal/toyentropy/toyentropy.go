// Package toyentropy is a codec for tests of rate control: a uniform
// scalar quantizer with one step per tensor whose codes are
// deflate-compressed, so that its payload size depends on the values, not
// only on the shape. It implements codec.Planner and codec.SizeEstimator,
// honours codec.Plan.Bytes (it coarsens its step until the payload fits the
// allotment) and is registered, under a test ID the product never writes,
// only when Register is called.
//
// Payload: one byte, 0 (every value zero, nothing follows) or 1; then the
// step as a little-endian float32 and a raw deflate stream (RFC 1951) of
// rows·cols codes, each a zigzag-encoded unsigned varint; code q means q·step.
package toyentropy

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"sync"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/tensor"
)

// Name and ID of the codec.
const (
	Name        = "toy_entropy"
	ID   uint16 = 0xfff2
)

// Steps is the number of candidate steps: step k is rms·2^(1−k/8), rms
// the tensor's root mean square, from 2·rms down to rms/128.
const Steps = 65

// maxCode bounds |q| (three varint bytes at most).
const maxCode = 1 << 19

var once sync.Once

// Register registers the codec (once; later calls do nothing).
func Register() {
	once.Do(func() {
		codec.Register(ID, Name, "test codec: uniform step per tensor, deflate-coded indices", func(o codec.Options) (codec.Codec, error) {
			if err := o.Only(Name, 0); err != nil {
				return nil, err
			}
			return New(), nil
		})
	})
}

// New returns the codec with no plan: every tensor at step 40 (rms/16,
// about 4 bits per weight on Gaussian weights).
func New() *Codec { return &Codec{} }

// Step is a configuration: step rms·2^(1−k/8).
type Step int

func (s Step) String() string { return fmt.Sprintf("step=%d", int(s)) }

func (s Step) factor() float64 { return math.Exp2(1 - float64(s)/8) }

// Codec is the toy codec; after Planned, with a step and an allotment per
// tensor.
type Codec struct {
	steps map[string]Step
	bytes map[string]int64
	sum   string
}

func (*Codec) ID() uint16      { return ID }
func (*Codec) Name() string    { return Name }
func (*Codec) Version() uint16 { return 1 }
func (c *Codec) Params() string {
	if c.sum != "" {
		return c.sum
	}
	return Step(40).String()
}
func (c *Codec) TensorParams(t tensor.Info) string { return c.step(t).String() }
func (*Codec) Cost(t tensor.Info) int64            { return 12*t.Elems() + 1<<20 }

// MaxRelErr: rounding to the nearest multiple of the step never moves a
// value farther than itself from its reconstruction.
func (*Codec) MaxRelErr(tensor.Info) float64 { return 1 + 1e-6 }

func (c *Codec) step(t tensor.Info) Step {
	if s, ok := c.steps[t.Name]; ok {
		return s
	}
	return 40
}

func rms(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(v) * float64(v)
	}
	return math.Sqrt(s / float64(max(len(x), 1)))
}

func finite(x []float32) error {
	for i, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("%w: %s: element %d is %v", codec.ErrUnsupported, Name, i, v)
		}
	}
	return nil
}

func quant(v float32, step float32) int64 {
	q := math.Round(float64(v / step))
	return int64(max(-maxCode, min(maxCode, q)))
}

// encode returns the payload of x at step (0: the all-zero payload).
func encode(x []float32, step float32) []byte {
	if !(step > 0) || math.IsInf(float64(step), 0) {
		return []byte{0}
	}
	var buf bytes.Buffer
	buf.WriteByte(1)
	binary.Write(&buf, binary.LittleEndian, math.Float32bits(step))
	fw, _ := flate.NewWriter(&buf, flate.HuffmanOnly)
	var tmp [binary.MaxVarintLen64]byte
	codes := make([]byte, 0, 1<<16)
	for _, v := range x {
		codes = append(codes, tmp[:binary.PutVarint(tmp[:], quant(v, step))]...)
		if len(codes) >= 1<<16-binary.MaxVarintLen64 {
			fw.Write(codes)
			codes = codes[:0]
		}
	}
	fw.Write(codes)
	fw.Close()
	return buf.Bytes()
}

// Encode writes t coded with its planned step, or the coarsest finer-or-
// equal coding that fits its allotment (codec.Plan.Bytes).
func (c *Codec) Encode(w io.Writer, t tensor.Info, x []float32) error {
	if err := finite(x); err != nil {
		return err
	}
	r := rms(x)
	allot, capped := c.bytes[t.Name]
	for s := c.step(t); s >= 0; s-- {
		p := encode(x, float32(r*s.factor()))
		if !capped || int64(len(p)) <= allot {
			_, err := w.Write(p)
			return err
		}
	}
	if allot < 1 {
		return fmt.Errorf("%s: tensor %q: an allotment of %d bytes holds no payload", Name, t.Name, allot)
	}
	_, err := w.Write([]byte{0})
	return err
}

// Decode reads a payload written by Encode.
func (*Codec) Decode(dst []float32, p []byte, t tensor.Info, version uint16) error {
	if version != 1 || int64(len(dst)) != t.Elems() {
		return fmt.Errorf("%w: %s version %d for %d values", codec.ErrCorrupt, Name, version, len(dst))
	}
	if len(p) == 1 && p[0] == 0 {
		clear(dst)
		return nil
	}
	if len(p) < 5 || p[0] != 1 {
		return fmt.Errorf("%w: %s header", codec.ErrCorrupt, Name)
	}
	step := math.Float32frombits(binary.LittleEndian.Uint32(p[1:]))
	if !(step > 0) || math.IsInf(float64(step), 0) {
		return fmt.Errorf("%w: %s step %v", codec.ErrCorrupt, Name, step)
	}
	fr := flate.NewReader(bytes.NewReader(p[5:]))
	defer fr.Close()
	br := &byteReader{r: fr}
	for i := range dst {
		q, err := binary.ReadVarint(br)
		if err != nil || q < -maxCode || q > maxCode {
			return fmt.Errorf("%w: %s code %d: %v", codec.ErrCorrupt, Name, i, err)
		}
		dst[i] = float32(q) * step
	}
	if _, err := br.ReadByte(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %s: data after the last code", codec.ErrCorrupt, Name)
	}
	return nil
}

type byteReader struct {
	r   io.Reader
	buf [4096]byte
	n   int
	off int
}

func (b *byteReader) ReadByte() (byte, error) {
	if b.off == b.n {
		n, err := b.r.Read(b.buf[:])
		if n == 0 {
			if err == nil {
				err = io.ErrNoProgress
			}
			return 0, err
		}
		b.n, b.off = n, 0
	}
	b.off++
	return b.buf[b.off-1], nil
}

// The planner.

// Candidates returns every step.
func (*Codec) Candidates(rows, cols int) []codec.Config {
	out := make([]codec.Config, Steps)
	for k := range out {
		out[k] = Step(k)
	}
	return out
}

func steps(cfgs []codec.Config) ([]Step, error) {
	out := make([]Step, len(cfgs))
	for k, cfg := range cfgs {
		s, ok := cfg.(Step)
		if !ok || s < 0 || s >= Steps {
			return nil, fmt.Errorf("not a %s configuration: %v", Name, cfg)
		}
		out[k] = s
	}
	return out, nil
}

// Distortions quantizes the sample with each step (relative to the
// sample's root mean square).
func (*Codec) Distortions(x []float32, cols int, imp []float32, cfgs []codec.Config) ([]float64, error) {
	ss, err := steps(cfgs)
	if err != nil {
		return nil, err
	}
	if err := finite(x); err != nil {
		return nil, err
	}
	r := rms(x)
	out := make([]float64, len(ss))
	for k, s := range ss {
		step := float32(r * s.factor())
		for i, v := range x {
			w := 1.0
			if imp != nil {
				w = float64(imp[i%cols])
			}
			d := float64(v)
			if step > 0 {
				d -= float64(quant(v, step)) * float64(step)
			}
			out[k] += w * d * d
		}
	}
	return out, nil
}

// EstimateSizes codes the sample with each step and scales its deflated
// size to the whole tensor, plus 1 % when the sample is not the whole
// tensor, plus 8 bytes. It errs high: besides the margin, a sample pays
// for a Huffman table per deflate block as the whole tensor does, on
// fewer codes.
func (*Codec) EstimateSizes(x []float32, rows, cols int, imp []float32, cfgs []codec.Config) ([]int64, error) {
	ss, err := steps(cfgs)
	if err != nil {
		return nil, err
	}
	if err := finite(x); err != nil {
		return nil, err
	}
	n := len(x) / cols
	r := rms(x)
	out := make([]int64, len(ss))
	for k, s := range ss {
		p := int64(len(encode(x, float32(r*s.factor()))))
		if p > 5 && n < rows {
			p = 5 + (p-5)*int64(rows)/int64(n)
			p += p / 100 // the sample's rows may code better than the rest
		}
		out[k] = p + 8
	}
	return out, nil
}

// ConfigSize bounds the payload: three varint bytes per code, stored
// deflate blocks.
func (*Codec) ConfigSize(cfg codec.Config, rows, cols int) (int64, error) {
	if _, err := steps([]codec.Config{cfg}); err != nil {
		return 0, err
	}
	n := 3 * int64(rows) * int64(cols)
	return 5 + n + 5*(n/65535+1) + 16, nil
}

// Planned returns the codec with a step and an allotment per tensor.
func (c *Codec) Planned(p codec.Plan) (codec.Codec, error) {
	cc := &Codec{steps: map[string]Step{}, bytes: p.Bytes, sum: p.Summary}
	for name, cfg := range p.Configs {
		ss, err := steps([]codec.Config{cfg})
		if err != nil {
			return nil, fmt.Errorf("tensor %q: %w", name, err)
		}
		cc.steps[name] = ss[0]
	}
	return cc, nil
}
