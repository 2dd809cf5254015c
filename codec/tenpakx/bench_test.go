package tenpakx

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/codec/internal/q4"

	"github.com/tpconvert/tpconvert/codec/numtest"

	"github.com/tpconvert/tpconvert/internal/procstat"
)

// residualSample returns n 4-vectors drawn like a residual (Student-t)
// with weights in [0.5, 2].
func residualSample(n int) (x, w []vec) {
	rng := numtest.NewRand(7)
	x, w = make([]vec, n), make([]vec, n)
	for i := range x {
		for k := range VectorDim {
			x[i][k] = float32(0.02 * numtest.StudentT(rng, 5))
			w[i][k] = float32(0.5 + 1.5*rng.Float64())
		}
	}
	return x, w
}

func BenchmarkKMeansAssign(b *testing.B) {
	x, w := residualSample(65536)
	cb := kmeans(x, w, numtest.NewRand(1), 2)
	tree := newKDTree(cb)
	q, qw := residualSample(1 << 14)
	b.Run("kdtree", func(b *testing.B) {
		var stack kdStack
		c0 := procstat.CPUTime()
		for b.Loop() {
			for i := range q {
				tree.nearest(&q[i], &qw[i], -1, &stack)
			}
		}
		b.ReportMetric(float64((procstat.CPUTime()-c0).Nanoseconds())/float64(b.N*len(q)), "cpu-ns/vector")
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(q)), "ns/vector")
	})
	b.Run("brute", func(b *testing.B) {
		c0 := procstat.CPUTime()
		for b.Loop() {
			for i := range q {
				nearestBrute(cb, &q[i], &qw[i])
			}
		}
		b.ReportMetric(float64((procstat.CPUTime()-c0).Nanoseconds())/float64(b.N*len(q)), "cpu-ns/vector")
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(q)), "ns/vector")
	})
}

// reportCPU adds the CPU time per operation to a benchmark's results: on
// a machine shared with other work it is steadier than wall time.
func reportCPU(b *testing.B, start time.Duration, unit string, perOp float64) {
	cpu := float64((procstat.CPUTime() - start).Nanoseconds()) / float64(b.N)
	b.ReportMetric(cpu/1e6, "cpu-ms/op")
	if unit != "" {
		b.ReportMetric(perOp*1e9/cpu, unit)
	}
}

var bench struct {
	once sync.Once
	x    []float32
}

// benchMatrix returns a realistic 2048×5632 matrix (the shape of an MLP
// down projection of TinyLlama), generated once.
func benchMatrix() []float32 {
	bench.once.Do(func() { bench.x = numtest.Realistic().Matrix(numtest.NewRand(1), 2048, 5632) })
	return bench.x
}

func BenchmarkSketch(b *testing.B) {
	x := benchMatrix()
	isq := slices.Repeat([]float64{1}, 5632)
	work := slices.Clone(x)
	b.ResetTimer()
	c0 := procstat.CPUTime()
	for b.Loop() {
		if _, _, err := factor(work, 2048, 5632, DefaultRank, isq, numtest.NewRand(1), 1); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, c0, "", 0)
}

func BenchmarkPack(b *testing.B) {
	x := benchMatrix()
	l := q4.Layout{Rows: 2048, Cols: 5632}
	n, _ := l.SectionSize()
	dst := make([]byte, n)
	b.SetBytes(int64(len(x)) * 2)
	c0 := procstat.CPUTime()
	for b.Loop() {
		if err := q4.Encode(dst, x, l, 1); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, c0, "Mweights/cpu-s", float64(len(x))/1e6)
}

func BenchmarkEncode2048x5632(b *testing.B) {
	x := benchMatrix()
	info := numtest.Info("mlp.down_proj", 2048, 5632)
	for _, workers := range []int{1, 2} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			c := newCodec(b, codec.Options{})
			c.workers = workers
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(workers))
			c0 := procstat.CPUTime()
			for b.Loop() {
				if err := c.Encode(io.Discard, info, x); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, c0, "", 0)
		})
	}
}

func BenchmarkDecode(b *testing.B) {
	x := benchMatrix()
	info := numtest.Info("mlp.down_proj", 2048, 5632)
	c := newCodec(b, codec.Options{})
	payload := encode(b, c, info, x)
	dst := make([]float32, len(x))
	for _, workers := range []int{1, 2} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			c.workers = workers
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(workers))
			b.SetBytes(int64(len(dst)) * 2) // FP16 output bytes
			c0 := procstat.CPUTime()
			for b.Loop() {
				if err := c.Decode(dst, payload, info, Version); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(dst))*float64(b.N)/b.Elapsed().Seconds()/1e6, "Mweights/s")
			reportCPU(b, c0, "Mweights/cpu-s", float64(len(dst))/1e6)
		})
	}
}

// BenchmarkCodecs2048x5632 compares tenpak_x_v1 with the int4 and int8
// baselines on the realistic synthetic matrix: it reports bits per weight
// and SQNR besides the encode time.
func BenchmarkCodecs2048x5632(b *testing.B) {
	x := benchMatrix()
	info := numtest.Info("mlp.down_proj", 2048, 5632)
	for _, tc := range []struct {
		name string
		o    codec.Options
	}{
		{"tenpak_x_v1", codec.Options{}},
		{"tenpak_x_v1", codec.Options{GroupSize: 128}},
		{"int4", codec.Options{}},
		{"int4", codec.Options{GroupSize: 5632}},
		{"int8", codec.Options{}},
	} {
		c, err := codec.New(tc.name, tc.o)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(strings.ReplaceAll(tc.name+" "+c.Params(), " ", "_"), func(b *testing.B) {
			var res numtest.Result
			var cpu time.Duration
			for b.Loop() {
				var buf bytes.Buffer
				c0 := procstat.CPUTime()
				if err := c.Encode(&buf, info, x); err != nil {
					b.Fatal(err)
				}
				cpu += procstat.CPUTime() - c0
				b.StopTimer()
				y := make([]float32, len(x))
				if err := c.Decode(y, buf.Bytes(), info, c.Version()); err != nil {
					b.Fatal(err)
				}
				res.RelErr, res.SQNR = numtest.Compare(x, y)
				res.BitsPerWeight = 8 * float64(buf.Len()) / float64(len(x))
				b.StartTimer()
			}
			b.ReportMetric(float64(cpu.Nanoseconds())/1e6/float64(b.N), "encode-cpu-ms/op")
			b.ReportMetric(res.BitsPerWeight, "bits/weight")
			b.ReportMetric(res.SQNR, "SQNR-dB")
		})
	}
}

// BenchmarkEncodeLayer encodes the seven matrices of one TinyLlama-1.1B
// decoder layer (q, k, v, o, gate, up, down) on one goroutine; a whole
// model is 22 layers, shared by the pipeline's workers.
func BenchmarkEncodeLayer(b *testing.B) {
	shapes := [][2]int{{2048, 2048}, {256, 2048}, {256, 2048}, {2048, 2048}, {5632, 2048}, {5632, 2048}, {2048, 5632}}
	rng := numtest.NewRand(9)
	xs := make([][]float32, len(shapes))
	for i, sh := range shapes {
		xs[i] = numtest.Realistic().Matrix(rng, sh[0], sh[1])
	}
	c := newCodec(b, codec.Options{})
	c.workers = 1
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	b.ResetTimer()
	c0 := procstat.CPUTime()
	for b.Loop() {
		for i, sh := range shapes {
			if err := c.Encode(io.Discard, numtest.Info("layer", sh[0], sh[1]), xs[i]); err != nil {
				b.Fatal(err)
			}
		}
	}
	reportCPU(b, c0, "", 0)
}
