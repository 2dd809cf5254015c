package tenpakx3

import (
	"bytes"
	"testing"
	"time"

	"github.com/tpconvert/tpconvert/codec/numtest"

	"github.com/tpconvert/tpconvert/internal/procstat"
)

// benchMatrix is an 8960×1536 matrix (an MLP projection of a 1.5B-parameter
// model), or a 896×1536 one with -short.
func benchMatrix(b *testing.B) ([]float32, int, int) {
	rows, cols := 8960, 1536
	if testing.Short() {
		rows = 896
	}
	return numtest.Realistic().Matrix(numtest.NewRand(1), rows, cols), rows, cols
}

func BenchmarkEncode(b *testing.B) {
	x, rows, cols := benchMatrix(b)
	c := fixed(b, 20)
	info := numtest.Info("w", rows, cols)
	b.SetBytes(int64(4 * len(x)))
	c0 := procstat.CPUTime()
	for b.Loop() {
		if err := c.Encode(&bytes.Buffer{}, info, x); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, c0, len(x))
}

func BenchmarkDecode(b *testing.B) {
	x, rows, cols := benchMatrix(b)
	c := fixed(b, 20)
	info := numtest.Info("w", rows, cols)
	var buf bytes.Buffer
	if err := c.Encode(&buf, info, x); err != nil {
		b.Fatal(err)
	}
	y := make([]float32, len(x))
	b.SetBytes(int64(4 * len(x)))
	c0 := procstat.CPUTime()
	for b.Loop() {
		if err := c.Decode(y, buf.Bytes(), info, Version); err != nil {
			b.Fatal(err)
		}
	}
	reportCPU(b, c0, len(x))
}

// reportCPU reports the CPU time per operation and the F32 input
// megabytes per CPU-second since c0 (the machine may be shared: wall
// times are then longer).
func reportCPU(b *testing.B, c0 time.Duration, n int) {
	cpu := (procstat.CPUTime() - c0).Seconds() / float64(b.N)
	b.ReportMetric(cpu*1e3, "cpu-ms/op")
	b.ReportMetric(4*float64(n)/cpu/1e6, "cpu-MB/s")
}

// BenchmarkEstimate is rate control's work for one tensor: Distortions
// and EstimateSizes of every candidate on a sample of 21 rows of 1536
// (the 32768 weights package rate samples).
func BenchmarkEstimate(b *testing.B) {
	rows, cols := 8960, 1536
	x := numtest.Realistic().Matrix(numtest.NewRand(1), 21, cols)
	c := fixed(b, 20)
	cfgs := c.Candidates(rows, cols)
	c0 := procstat.CPUTime()
	for b.Loop() {
		if _, err := c.Distortions(x, cols, nil, cfgs); err != nil {
			b.Fatal(err)
		}
		if _, err := c.EstimateSizes(x, rows, cols, nil, cfgs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric((procstat.CPUTime()-c0).Seconds()/float64(b.N)*1e3, "cpu-ms/op")
}
