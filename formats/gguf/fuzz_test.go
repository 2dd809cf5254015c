package gguf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/tpconvert/tpconvert/tensor"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite the seed corpus in testdata/fuzz/FuzzOpen")

// seedFiles are small GGUF files for FuzzOpen: valid ones of several shapes
// and a few that are broken in one field.
func seedFiles(t testing.TB) map[string][]byte {
	rng := rand.New(rand.NewPCG(9, 9))
	kv, m := handKV()
	seeds := map[string][]byte{
		"hand_v2":      rawFile(2, 1, archKV(), baseTensors(), 32, baseData()),
		"hand_v3_kv":   rawFile(3, uint64(len(m)), kv, baseTensors(), 32, baseData()),
		"no_tensors":   rawFile(3, 1, archKV(), nil, 32, nil),
		"gap":          rawFile(3, 1, archKV(), []rawTensor{baseTensors()[0], {name: "b", ne: []uint64{4}, typ: 0, off: 96}}, 32, make([]byte, 112)),
		"overlap":      rawFile(3, 1, archKV(), []rawTensor{baseTensors()[0], {name: "b", ne: []uint64{4}, typ: 0, off: 32}}, 32, baseData()),
		"bad_version":  rawFile(1, 1, archKV(), baseTensors(), 32, baseData()),
		"deep_array":   rawFile(3, 1, (&enc{}).key("d", TypeArray).u32(uint32(TypeArray)).u64(1).u32(uint32(TypeString)).u64(1).str("s").b, nil, 32, nil),
		"align_64_gen": buildFile(t, 3, append(bytes.Clone(kv), (&enc{}).key(AlignmentKey, TypeUint32).u32(64).b...), uint64(len(m)+1), 64, 64, []string{"b", "a", "e"}, []testTensor{randomTensor(rng, "a", tensor.Q4_K, 1, 256), randomTensor(rng, "e", tensor.F16, 0), randomTensor(rng, "b", tensor.Q5_0, 2, 32)}),
	}
	return seeds
}

// TestFuzzCorpus keeps testdata/fuzz/FuzzOpen in step with seedFiles
// (regenerate with -update-corpus).
func TestFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzOpen")
	for name, b := range seedFiles(t) {
		p := filepath.Join(dir, name)
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if *updateCorpus {
			if err := os.WriteFile(p, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%v (run go test -run TestFuzzCorpus -update-corpus)", err)
		}
		if string(got) != want {
			t.Errorf("%s is out of date (run go test -run TestFuzzCorpus -update-corpus)", p)
		}
	}
}

// FuzzOpen opens arbitrary bytes as a GGUF file. Open must fail with a
// *FormatError or succeed; a file that opens must have readable tensors
// and must survive a rewrite: byte for byte when CheckReproducible says so,
// otherwise with the same metadata and tensors.
func FuzzOpen(f *testing.F) {
	for _, b := range seedFiles(f) {
		f.Add(b)
	}
	if small, err := os.ReadFile(filepath.Join(goldenDir, "small.gguf")); err == nil {
		f.Add(small)
	}
	// One directory for all inputs: a fresh t.TempDir per input would
	// cost more than the parse.
	dir := f.TempDir()
	var seq atomic.Int64
	open := func(t *testing.T, b []byte) (*Reader, error) {
		p := filepath.Join(dir, fmt.Sprintf("%d.gguf", seq.Add(1)))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := Open(p)
		if err == nil {
			t.Cleanup(func() { r.Close() })
		}
		os.Remove(p) // the mapping stays valid
		return r, err
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := open(t, data)
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error is not a *FormatError: %v", err)
			}
			return
		}
		_ = r.KV()
		for i, ti := range r.Tensors() {
			b, err := r.Bytes(i)
			if err != nil || int64(len(b)) != ti.Size {
				t.Fatalf("tensor %s: %d bytes, %v", ti.Name, len(b), err)
			}
			if tensor.CanDecode(ti.DType) && ti.Elems() <= 1<<16 {
				if err := tensor.ToFloat32(make([]float32, ti.Elems()), ti.DType, b); err != nil {
					t.Fatalf("tensor %s: %v", ti.Name, err)
				}
			}
		}
		out := rewrite(t, r)
		if r.CheckReproducible() == nil {
			if !bytes.Equal(out, data) {
				t.Fatalf("rewrite differs at byte %d", firstDiff(out, data))
			}
			return
		}
		r2, err := open(t, out)
		if err != nil {
			t.Fatalf("rewrite does not open: %v", err)
		}
		sameContent(t, r, r2)
		if err := r2.CheckReproducible(); err != nil {
			t.Fatalf("rewrite is not reproducible: %v", err)
		}
	})
}

// scaleBound returns the largest |value| a block can decode to, from its
// scale fields as ggml-common.h places them; ok is false when a scale is
// not finite.
func scaleBound(dt tensor.DType, b []byte) (bound float64, ok bool) {
	h := func(off int) float64 {
		return math.Abs(float64(tensor.HalfToFloat(binary.LittleEndian.Uint16(b[off:]))))
	}
	switch dt {
	case tensor.Q4_0:
		bound = 8 * h(0)
	case tensor.Q4_1:
		bound = 15*h(0) + h(2)
	case tensor.Q5_0:
		bound = 16 * h(0)
	case tensor.Q5_1:
		bound = 31*h(0) + h(2)
	case tensor.Q8_0:
		bound = 128 * h(0)
	case tensor.Q2_K:
		bound = 15*3*h(80) + 15*h(82)
	case tensor.Q3_K:
		bound = 32 * 4 * h(108)
	case tensor.Q4_K:
		bound = 63*15*h(0) + 63*h(2)
	case tensor.Q5_K:
		bound = 63*31*h(0) + 63*h(2)
	case tensor.Q6_K:
		bound = 128 * 32 * h(208)
	case tensor.Q8_K:
		bound = 128 * math.Abs(float64(math.Float32frombits(binary.LittleEndian.Uint32(b))))
	case tensor.IQ4_NL:
		bound = 127 * h(0)
	}
	return bound, !math.IsNaN(bound) && !math.IsInf(bound, 0)
}

// FuzzDequantize decodes arbitrary bytes as whole blocks of one of the
// registered types (chosen by typ). Decoding must succeed, give the same
// values block by block as in one call, and stay within the bound the
// block's scales allow.
func FuzzDequantize(f *testing.F) {
	for i, dt := range dequantTypes {
		if src, err := os.ReadFile(filepath.Join(goldenDir, dt.String()+".bin")); err == nil {
			f.Add(uint8(i), src)
		}
		f.Add(uint8(i), make([]byte, dt.BlockBytes()))
	}
	f.Fuzz(func(t *testing.T, typ uint8, data []byte) {
		dt := dequantTypes[int(typ)%len(dequantTypes)]
		be, bb := int(dt.BlockElems()), int(dt.BlockBytes())
		nb := len(data) / bb
		data = data[:nb*bb]
		all := make([]float32, nb*be)
		if err := tensor.ToFloat32(all, dt, data); err != nil {
			t.Fatal(err)
		}
		one := make([]float32, be)
		for k := 0; k < nb; k++ {
			block := data[k*bb : (k+1)*bb]
			if err := tensor.ToFloat32(one, dt, block); err != nil {
				t.Fatal(err)
			}
			bound, ok := scaleBound(dt, block)
			for i, v := range one {
				if math.Float32bits(v) != math.Float32bits(all[k*be+i]) {
					t.Fatalf("block %d element %d: %v alone, %v in one call", k, i, v, all[k*be+i])
				}
				if ok && bound <= math.MaxFloat32 && !(math.Abs(float64(v)) <= bound*(1+1e-6)) {
					t.Fatalf("%s block %d element %d = %v exceeds the scale bound %g", dt, k, i, v, bound)
				}
			}
		}
		if err := tensor.ToFloat32(make([]float32, (nb+1)*be), dt, data); err == nil {
			t.Fatal("decoding too few bytes succeeded")
		}
	})
}

// FuzzParseKV parses arbitrary key/value sections. Accepted input must
// re-encode to a section of the same length that parses to the same pairs.
func FuzzParseKV(f *testing.F) {
	kv, m := handKV()
	f.Add(uint8(len(m)), kv)
	f.Add(uint8(1), archKV())
	f.Fuzz(func(t *testing.T, count uint8, raw []byte) {
		m, err := ParseKV(raw, uint64(count))
		if err != nil {
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error is not a *FormatError: %v", err)
			}
			return
		}
		enc, err := EncodeKV(m)
		if err != nil {
			t.Fatalf("EncodeKV of parsed pairs: %v", err)
		}
		if len(enc) != len(raw) {
			t.Fatalf("re-encoded to %d bytes, input had %d", len(enc), len(raw))
		}
		m2, err := ParseKV(enc, uint64(count))
		if err != nil {
			t.Fatal(err)
		}
		enc2, _ := EncodeKV(m2)
		if !bytes.Equal(enc, enc2) {
			t.Fatal("second encoding differs")
		}
	})
}
