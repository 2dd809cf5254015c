package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/tensor"
)

// toyName and toyID name a codec defined here, in a test, to show that a
// codec with a planner plugs into --codec and rate control through the
// registry alone. The ID is never written by the product's codecs.
const (
	toyName        = "toy_planner"
	toyID   uint16 = 0xfff1
)

func init() {
	codec.Register(toyID, toyName, "test codec: symmetric b-bit codes, one float32 scale per row", func(o codec.Options) (codec.Codec, error) {
		if o.Rank != 0 || o.GroupSize != 0 {
			return nil, fmt.Errorf("%s takes no rank or group size", toyName)
		}
		return &toyCodec{}, nil
	})
}

// toyBits is a toy configuration: bits per code, 2-8.
type toyBits int

func (b toyBits) String() string { return fmt.Sprintf("bits=%d", int(b)) }

// toyCodec stores a bits byte, then rows float32 scales, then rows·cols
// codes of b bits each (LSB first, one bit stream); code q means
// (q − (2^(b−1)−1))·scale.
type toyCodec struct {
	plan map[string]toyBits
	sum  string
}

func (*toyCodec) ID() uint16      { return toyID }
func (*toyCodec) Name() string    { return toyName }
func (*toyCodec) Version() uint16 { return 1 }
func (c *toyCodec) Params() string {
	if c.sum != "" {
		return c.sum
	}
	return toyBits(8).String()
}
func (c *toyCodec) TensorParams(t tensor.Info) string { return c.bits(t).String() }
func (*toyCodec) Cost(t tensor.Info) int64            { return 2 * t.Elems() }
func (*toyCodec) MaxRelErr(tensor.Info) float64       { return 1 }

func (c *toyCodec) bits(t tensor.Info) toyBits {
	if b, ok := c.plan[t.Name]; ok {
		return b
	}
	return 8
}

func toySize(b toyBits, rows, cols int) int64 {
	return 1 + 4*int64(rows) + (int64(rows)*int64(cols)*int64(b)+7)/8
}

// toyQuant returns the scale and codes of one row, and writes its
// reconstruction to y (if not nil).
func toyQuant(x []float32, b toyBits, codes []uint8, y []float32) float32 {
	h := float32(int(1)<<(b-1) - 1)
	var m float32
	for _, v := range x {
		m = max(m, float32(math.Abs(float64(v))))
	}
	s := m / h
	for i, v := range x {
		q := float32(0)
		if s > 0 {
			q = float32(math.Round(float64(v / s)))
		}
		codes[i] = uint8(q + h)
		if y != nil {
			y[i] = q * s
		}
	}
	return s
}

func (c *toyCodec) Encode(w io.Writer, t tensor.Info, x []float32) error {
	r, cl := t.Matrix()
	rows, cols := int(r), int(cl)
	if rows <= 0 || cols <= 0 {
		return fmt.Errorf("%w: %s needs a matrix", codec.ErrUnsupported, toyName)
	}
	b := c.bits(t)
	p := make([]byte, toySize(b, rows, cols))
	p[0] = byte(b)
	codes := make([]uint8, cols)
	bit := int64(0)
	for r := 0; r < rows; r++ {
		s := toyQuant(x[r*cols:(r+1)*cols], b, codes, nil)
		binary.LittleEndian.PutUint32(p[1+4*r:], math.Float32bits(s))
		for _, q := range codes {
			for k := 0; k < int(b); k++ {
				if q>>k&1 != 0 {
					p[1+4*rows+int(bit/8)] |= 1 << (bit % 8)
				}
				bit++
			}
		}
	}
	_, err := w.Write(p)
	return err
}

func (c *toyCodec) Decode(dst []float32, p []byte, t tensor.Info, version uint16) error {
	r, cl := t.Matrix()
	rows, cols := int(r), int(cl)
	if version != 1 || len(p) < 1 || p[0] < 2 || p[0] > 8 || rows <= 0 || cols <= 0 || int64(len(dst)) != t.Elems() {
		return fmt.Errorf("%w: %s header", codec.ErrCorrupt, toyName)
	}
	b := toyBits(p[0])
	if int64(len(p)) != toySize(b, rows, cols) {
		return fmt.Errorf("%w: %s payload of %d bytes", codec.ErrCorrupt, toyName, len(p))
	}
	h := float32(int(1)<<(b-1) - 1)
	bit := int64(0)
	for r := 0; r < rows; r++ {
		s := math.Float32frombits(binary.LittleEndian.Uint32(p[1+4*r:]))
		for i := 0; i < cols; i++ {
			q := 0
			for k := 0; k < int(b); k++ {
				if p[1+4*rows+int(bit/8)]>>(bit%8)&1 != 0 {
					q |= 1 << k
				}
				bit++
			}
			dst[r*cols+i] = (float32(q) - h) * s
		}
	}
	return nil
}

// The planner.

func (*toyCodec) Candidates(rows, cols int) []codec.Config {
	var out []codec.Config
	for b := 2; b <= 8; b++ {
		out = append(out, toyBits(b))
	}
	return out
}

func (*toyCodec) Distortions(x []float32, cols int, imp []float32, cfgs []codec.Config) ([]float64, error) {
	out := make([]float64, len(cfgs))
	codes, y := make([]uint8, cols), make([]float32, cols)
	for k, cfg := range cfgs {
		b, ok := cfg.(toyBits)
		if !ok {
			return nil, fmt.Errorf("not a toy configuration: %v", cfg)
		}
		for r := 0; r < len(x)/cols; r++ {
			row := x[r*cols : (r+1)*cols]
			toyQuant(row, b, codes, y)
			for i := range row {
				w := 1.0
				if imp != nil {
					w = float64(imp[i])
				}
				d := float64(row[i] - y[i])
				out[k] += w * d * d
			}
		}
	}
	return out, nil
}

func (*toyCodec) ConfigSize(cfg codec.Config, rows, cols int) (int64, error) {
	b, ok := cfg.(toyBits)
	if !ok {
		return 0, fmt.Errorf("not a toy configuration: %v", cfg)
	}
	return toySize(b, rows, cols), nil
}

func (c *toyCodec) Planned(p codec.Plan) (codec.Codec, error) {
	cc := &toyCodec{plan: map[string]toyBits{}, sum: p.Summary}
	for name, cfg := range p.Configs {
		b, ok := cfg.(toyBits)
		if !ok {
			return nil, fmt.Errorf("tensor %q: not a toy configuration: %v", name, cfg)
		}
		cc.plan[name] = b
	}
	return cc, nil
}

// TestToyCodecWithPlanner: a codec registered by this test, with a
// planner, is selectable by --codec and sized by --bpw, without any
// change to the pipeline, the formats, the library or the CLI.
func TestToyCodecWithPlanner(t *testing.T) {
	dir, in := fixture(t)
	inspect := func(path string) inspected { return inspectJSON(t, path) }
	count := func(rep inspected) int {
		n := 0
		for _, tr := range rep.Tensors {
			if tr.Codec == toyName {
				n++
			}
		}
		return n
	}

	plain := filepath.Join(dir, "plain.tpk")
	if code, _, stderr := runCLI(t, in, "--codec", toyName, "-o", plain); code != 0 {
		t.Fatalf("--codec %s: exit %d: %s", toyName, code, stderr)
	}
	if rep := inspect(plain); count(rep) == 0 {
		t.Errorf("--codec %s coded no tensor: %+v", toyName, rep.Tensors)
	}
	if code, _, stderr := runCLI(t, "restore", plain, "-o", filepath.Join(dir, "plain.safetensors")); code != 0 {
		t.Errorf("restore: exit %d: %s", code, stderr)
	}

	for _, bpw := range []float64{3, 5} {
		out := filepath.Join(dir, fmt.Sprintf("rate%g.tpk", bpw))
		code, stdout, stderr := runCLI(t, in, "--codec", toyName, "--bpw", fmt.Sprint(bpw), "--sample-rows", "8", "-o", out)
		if code != 0 {
			t.Fatalf("--codec %s --bpw %g: exit %d: %s", toyName, bpw, code, stderr)
		}
		if !strings.Contains(stdout, "rate control") {
			t.Errorf("--bpw %g: the summary does not show the plan:\n%s", bpw, stdout)
		}
		rep := inspect(out)
		if rep.Codec != toyName || len(rep.Allocation) == 0 || !strings.HasPrefix(rep.Allocation[0].Config, "bits=") {
			t.Errorf("--bpw %g: inspect shows codec %q, allocation %+v", bpw, rep.Codec, rep.Allocation)
		}
		if n := count(rep); n != 16 { // 2 layers × 7 projections + embedding + head
			t.Errorf("--bpw %g: %d tensors coded by %s, want 16", bpw, n, toyName)
		}
		if rep.Totals.BPWAll > bpw || rep.Totals.BPWAll < bpw*0.9 {
			t.Errorf("--bpw %g gave %.4f bits/parameter", bpw, rep.Totals.BPWAll)
		}
		t.Logf("--codec %s --bpw %g: %.4f bits/parameter, allocation %+v", toyName, bpw, rep.Totals.BPWAll, rep.Allocation)
		rest := filepath.Join(dir, fmt.Sprintf("rate%g.safetensors", bpw))
		if code, _, stderr := runCLI(t, "restore", out, "-o", rest); code != 0 {
			t.Errorf("restore: exit %d: %s", code, stderr)
		}
		if _, err := os.Stat(rest); err != nil {
			t.Error(err)
		}
	}
}
