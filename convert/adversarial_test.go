package convert_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/tpconvert/tpconvert/codec"
	_ "github.com/tpconvert/tpconvert/codec/tenpakx2"
	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/formats/tpk"
	"github.com/tpconvert/tpconvert/stream"
	"github.com/tpconvert/tpconvert/tensor"
)

// advShapes are the matrix shapes FuzzEncodeAdversarial picks from: rows
// and columns of 1, odd and power-of-two sizes.
var advShapes = [][2]int{{1, 1}, {1, 7}, {7, 1}, {64, 1}, {1, 64}, {2, 3}, {4, 8}, {8, 32}, {3, 33}, {16, 16}, {5, 64}, {32, 48}}

// advSpecials are the values a fuzz byte below 0x80 stands for.
var advSpecials = []float32{
	0, float32(math.Copysign(0, -1)), 1, -1, 2, 3, 0.3, -0.3, 1e-3,
	float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1)),
	math.MaxFloat32, -math.MaxFloat32, 3.4e38, -3.4e38, 1e30, 1e6, -1e6, 65504, -65504, 65520, 70000,
	1e-9, -1e-9, 1e-20, math.SmallestNonzeroFloat32, -math.SmallestNonzeroFloat32, 1.1754942e-38, 6e-8, 2e-5,
}

// advValues expands fuzz bytes into n float32 values: a byte below 0x80
// is advSpecials[b % len], a byte from 0x80 takes the next four bytes as
// float32 bits; the values repeat cyclically when the bytes run out, and
// a run of one value gives constant tensors.
func advValues(data []byte, n int) []float32 {
	var vals []float32
	for i := 0; i < len(data); i++ {
		b := data[i]
		if b < 0x80 || i+4 >= len(data) {
			vals = append(vals, advSpecials[int(b)%len(advSpecials)])
			continue
		}
		vals = append(vals, math.Float32frombits(binary.LittleEndian.Uint32(data[i+1:])))
		i += 4
	}
	if len(vals) == 0 {
		vals = []float32{0}
	}
	x := make([]float32, n)
	for i := range x {
		x[i] = vals[i%len(vals)]
	}
	return x
}

// advCodecs are the encoders under test, by name and options.
var advCodecs = []struct {
	name string
	o    codec.Options
}{
	{"f16", codec.Options{}}, {"bf16", codec.Options{}}, {"int8", codec.Options{}},
	{"int4", codec.Options{GroupSize: 8}}, {"tenpak_x_v1", codec.Options{Rank: 2, GroupSize: 8}},
	{"tenpak_x_v2", codec.Options{}},
}

// advTimeout bounds one compression or restore of a fuzz input (a few
// KiB): far above its normal time, far below a hang.
const advTimeout = 30 * time.Second

// withDeadline runs f and fails the test if it has not returned within
// advTimeout.
func withDeadline[T any](t *testing.T, what string, f func() (T, error)) (T, error) {
	t.Helper()
	type res struct {
		v   T
		err error
	}
	done := make(chan res, 1)
	go func() {
		v, err := f()
		done <- res{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-time.After(advTimeout):
		t.Fatalf("%s: no result after %v (a hang)", what, advTimeout)
		panic("unreachable")
	}
}

// FuzzEncodeAdversarial compresses one tensor of adversarial values (NaN,
// ±Inf, ±MaxFloat32, values beyond FP16, denormals, constants, single
// outliers; shapes with a dimension of 1; F32, F16 and BF16 sources) with
// every lossy codec and with the rate control (--bpw), restores it, and
// checks: no panic, no hang, and either a clean error or a restored
// tensor that is bit-exact when stored unchanged and otherwise finite and
// within the codec's stated error bound (codec.MaxRelErr).
func FuzzEncodeAdversarial(f *testing.F) {
	for _, s := range advSeeds() {
		f.Add(s.shape, s.dtype, s.data)
	}
	f.Fuzz(func(t *testing.T, shape, dtype byte, data []byte) {
		if len(data) > 4096 {
			return
		}
		sh := advShapes[int(shape)%len(advShapes)]
		dt := []tensor.DType{tensor.F32, tensor.F16, tensor.BF16}[int(dtype)%3]
		rows, cols := sh[0], sh[1]
		x := advValues(data, rows*cols)
		raw := make([]byte, rows*cols*int(dt.BlockBytes()))
		if err := tensor.FromFloat32(raw, dt, x); err != nil {
			t.Fatal(err)
		}
		src := make([]float32, len(x)) // the source's values, as its dtype holds them
		if err := tensor.ToFloat32(src, dt, raw); err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		in := filepath.Join(dir, "m.safetensors")
		const name = "model.layers.0.mlp.up_proj.weight"
		hdr := fmt.Sprintf(`{%q:{"dtype":%q,"shape":[%d,%d],"data_offsets":[0,%d]}}`, name, dt, rows, cols, len(raw))
		file := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
		file = append(append(file, hdr...), raw...)
		if err := os.WriteFile(in, file, 0o644); err != nil {
			t.Fatal(err)
		}
		runs := len(advCodecs) + 1
		for k := range runs {
			o := convert.CompressOptions{
				Options:  stream.Options{Workers: 1},
				Selector: stream.Selector{Layers: stream.LayersAll, Include: regexp.MustCompile(".")},
			}
			label := "rate"
			if k < len(advCodecs) {
				c, err := codec.New(advCodecs[k].name, advCodecs[k].o)
				if err != nil {
					t.Fatal(err)
				}
				o.Codec, label = c, advCodecs[k].name
			} else {
				o.Rate = &convert.RateOptions{BPW: []float64{2, 3, 4.5, 8}[int(shape/16)%4]}
			}
			out := filepath.Join(dir, label+".tpk")
			if _, err := withDeadline(t, label+" compress", func() (*convert.Report, error) {
				return convert.CompressFile(context.Background(), in, out, o)
			}); err != nil {
				continue // a clean error; nothing may be left behind
			}
			back := filepath.Join(dir, label+".restored.safetensors")
			if _, err := withDeadline(t, label+" restore", func() (*convert.RestoreReport, error) {
				return convert.RestoreFile(context.Background(), out, back, convert.RestoreOptions{RestoreOptions: stream.RestoreOptions{Options: stream.Options{Workers: 1}}})
			}); err != nil {
				t.Fatalf("%s: compress succeeded, restore failed: %v", label, err)
			}
			checkAdversarial(t, label, out, back, raw, src, dt)
		}
	})
}

// checkAdversarial checks the restored tensor of FuzzEncodeAdversarial.
func checkAdversarial(t *testing.T, label, tpkPath, back string, raw []byte, src []float32, dt tensor.DType) {
	t.Helper()
	r, err := tpk.Open(tpkPath)
	if err != nil {
		t.Fatal(err)
	}
	e := r.Entries()[0]
	r.Close()
	b, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	got := b[len(b)-len(raw):]
	if e.CodecID == codec.IDNone {
		if string(got) != string(raw) {
			t.Fatalf("%s: stored unchanged, but restored bytes differ", label)
		}
		return
	}
	for _, v := range src {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatalf("%s: a non-finite source value was compressed by %s", label, e.Codec)
		}
	}
	y := make([]float32, len(src))
	if err := tensor.ToFloat32(y, dt, got); err != nil {
		t.Fatal(err)
	}
	s := stream.Measure(src, y)
	c, err := codec.ByID(e.CodecID)
	if err != nil {
		t.Fatal(err)
	}
	bound := codec.MaxRelErr(c, e.Info())
	if e.CodecID == codec.IDTenpakXV2 {
		bound = 0.95 // the loosest Config bound; the record's Config is not known to a default codec
	}
	for k, v := range y {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			t.Fatalf("%s: %s restored element %d (source %g) as %v", label, e.Codec, k, src[k], v)
		}
	}
	if !(s.RelErr <= bound*(1+1e-6)) {
		t.Fatalf("%s: %s restored with relative error %g, beyond its bound %g", label, e.Codec, s.RelErr, bound)
	}
}

type advSeed struct {
	shape, dtype byte
	data         []byte
}

// advSeeds are the examples of issue 10 and one of each kind of value;
// testdata/fuzz/FuzzEncodeAdversarial holds more.
func advSeeds() []advSeed {
	idx := func(v float32) byte {
		for i, s := range advSpecials {
			if math.Float32bits(s) == math.Float32bits(v) {
				return byte(i)
			}
		}
		panic(v)
	}
	f32 := func(v float32) []byte { return binary.LittleEndian.AppendUint32([]byte{0x80}, math.Float32bits(v)) }
	return []advSeed{
		{7, 0, []byte{idx(3.4e38), idx(-3.4e38)}},                                             // 8×32 of ±3.4e38 (tenpak_x_v1's SVD)
		{7, 0, []byte{idx(1e6), idx(0.3), idx(-1e6)}},                                         // beyond FP16 (tenpak_x_v2)
		{3, 0, []byte{idx(0.3)}},                                                              // 64×1 of 0.3 (constant groups)
		{6, 1, []byte{idx(65504), idx(-65504), idx(1)}},                                       // F16 at ±max
		{6, 0, []byte{idx(1e-9), idx(-1e-9), idx(2e-5)}},                                      // below FP16's range
		{8, 0, []byte{idx(float32(math.NaN())), idx(1)}},                                      // NaN
		{9, 2, []byte{idx(float32(math.Inf(1))), idx(0)}},                                     // +Inf
		{10, 0, []byte{idx(math.SmallestNonzeroFloat32)}},                                     // denormals only
		{11, 0, append([]byte{idx(1e30)}, make([]byte, 40)...)},                               // one outlier among zeros
		{7, 0, append([]byte{idx(3.4e38)}, bytes.Repeat([]byte{idx(0.3), idx(-0.3)}, 40)...)}, // one huge outlier (SVD)
		{0, 0, f32(-2.5)},
		{4, 2, append(f32(7.5), f32(-1e-30)...)},
		{7, 0, []byte{idx(math.MaxFloat32), idx(1), idx(2), idx(3)}},
		{23, 0, []byte{idx(0.3), idx(-0.3), idx(1e-3), idx(1)}},
		{39, 1, []byte{idx(70000), idx(1)}},
	}
}
