package convert_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/fixtures/gen"
	"github.com/tpconvert/tpconvert/formats/tpk"
	"github.com/tpconvert/tpconvert/internal/testfs"
	"github.com/tpconvert/tpconvert/stream"
	"github.com/tpconvert/tpconvert/tensor"
)

var fileSize = testfs.Size

// TestLosslessRestoresEveryByte: --lossless (the lossless codec for every
// tensor) makes single files of each float dtype, a sharded checkout with
// its index and a GGUF file of mixed block types smaller, and restore
// gives every source file back byte for byte.
func TestLosslessRestoresEveryByte(t *testing.T) {
	dir := t.TempDir()
	type src struct {
		name  string
		path  string
		files []string // files compared after the restore, relative
		write func(p string) error
	}
	var srcs []src
	for _, dt := range []tensor.DType{tensor.F32, tensor.F16, tensor.BF16} {
		srcs = append(srcs, src{name: dt.String(), path: "m-" + dt.String() + ".safetensors", write: func(p string) error { return gen.WriteSafetensors(p, tiny, dt, 7) }})
	}
	srcs = append(srcs,
		src{name: "checkout", path: "ckpt", write: func(p string) error { return gen.WriteCheckout(p, tiny, tensor.BF16, 2, 1<<20) }},
		src{name: "gguf", path: "m.gguf", write: func(p string) error { return gen.WriteGGUF(p, tiny, 3) }})
	for _, s := range srcs {
		t.Run(s.name, func(t *testing.T) {
			in := filepath.Join(dir, s.path)
			if err := s.write(in); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, s.name+".tpk")
			rep, err := convert.CompressFile(context.Background(), in, out, opts(t, "lossless", 2))
			if err != nil {
				t.Fatal(err)
			}
			if rep.Totals.Compressed != 0 || rep.Totals.Lossless == 0 {
				t.Errorf("totals: %+v", rep.Totals)
			}
			if rep.Totals.BytesOut >= rep.Totals.BytesIn {
				t.Errorf("%d bytes from %d", rep.Totals.BytesOut, rep.Totals.BytesIn)
			}
			t.Logf("%s: %.1f %% of the source", s.name, 100*float64(rep.Totals.BytesOut)/float64(rep.Totals.BytesIn))
			restored := filepath.Join(dir, s.name+".restored"+filepath.Ext(s.path))
			if _, err := convert.RestoreFile(context.Background(), out, restored, convert.RestoreOptions{}); err != nil {
				t.Fatal(err)
			}
			if s.name != "checkout" {
				sameFileBytes(t, in, restored)
				return
			}
			shards, _ := filepath.Glob(filepath.Join(in, "*.safetensors"))
			if len(shards) < 3 {
				t.Fatalf("%d shards", len(shards))
			}
			for _, f := range append(shards, filepath.Join(in, "model.safetensors.index.json")) {
				sameFileBytes(t, f, filepath.Join(restored, filepath.Base(f)))
			}
		})
	}
}

// TestLossyPassThroughIsLossless: with PassThrough set, the tensors a lossy
// codec leaves alone are stored with the lossless codec (only where that
// pays), restore bit-exact in their source dtype whatever --dtype says,
// and ggml block tensors among them still dequantize.
func TestLossyPassThroughIsLossless(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "m.gguf")
	if err := gen.WriteGGUF(in, tiny, 4); err != nil {
		t.Fatal(err)
	}
	pass := mustCodec(t, "lossless").(codec.ByteCodec)
	o := opts(t, "int8", 2)
	o.Selector = stream.Selector{Layers: stream.LayersMLP}
	plain := filepath.Join(dir, "plain.tpk")
	if _, err := convert.CompressFile(context.Background(), in, plain, o); err != nil {
		t.Fatal(err)
	}
	o.PassThrough = pass
	out := filepath.Join(dir, "pass.tpk")
	rep, err := convert.CompressFile(context.Background(), in, out, o)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Totals.Lossless == 0 || rep.Totals.Compressed == 0 {
		t.Fatalf("totals: %+v", rep.Totals)
	}
	if a, b := fileSize(t, out), fileSize(t, plain); a >= b {
		t.Errorf("pass-through file %d bytes, without %d", a, b)
	}
	for _, tr := range rep.Tensors {
		if tr.Codec == "lossless" && tr.StoredBytes >= tr.SourceBytes+64 {
			t.Errorf("%s: lossless record of %d bytes for %d", tr.Name, tr.StoredBytes, tr.SourceBytes)
		}
	}
	// Each pass-through tensor restores exactly as the file without
	// pass-through restores it, also with --dtype f32 and --dequantize.
	for _, ro := range []convert.RestoreOptions{{}, {RestoreOptions: stream.RestoreOptions{DType: tensor.F32, Dequantize: tensor.F16}}} {
		a := filepath.Join(dir, "a.gguf")
		b := filepath.Join(dir, "b.gguf")
		ro.Overwrite = true
		if _, err := convert.RestoreFile(context.Background(), plain, a, ro); err != nil {
			t.Fatal(err)
		}
		if _, err := convert.RestoreFile(context.Background(), out, b, ro); err != nil {
			t.Fatal(err)
		}
		sameFileBytes(t, a, b)
	}
}

// TestRateCountsPassThrough: with the lossless pass-through, rate control
// counts the real stored size of the tensors it leaves alone, so the
// file still meets the budget and the compressed tensors get the bytes
// saved.
func TestRateCountsPassThrough(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "m.safetensors")
	if err := gen.WriteSafetensors(in, tiny, tensor.F32, 5); err != nil {
		t.Fatal(err)
	}
	var payload [2]int64
	for i, pass := range []codec.ByteCodec{nil, mustCodec(t, "lossless").(codec.ByteCodec)} {
		o := rateOpts(&convert.RateOptions{BPW: 13}, 2)
		o.Selector = stream.Selector{Layers: stream.LayersMLP} // leave attention to the pass-through
		o.PassThrough = pass
		o.Overwrite = true
		out := filepath.Join(dir, "m.tpk")
		rep, err := convert.CompressFile(context.Background(), in, out, o)
		if err != nil {
			t.Fatal(err)
		}
		if got := rep.Totals.BPWAll; got > 13 || got < 0.97*13 {
			t.Errorf("pass-through %v: %.4f bits/parameter for --bpw 13", pass != nil, got)
		}
		payload[i] = rep.Rate.PayloadBytes
		r, err := tpk.Open(out)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range r.Entries() {
			if e.CodecID == codec.IDLossless {
				n++
			}
		}
		r.Close()
		if (n > 0) != (pass != nil) {
			t.Errorf("pass-through %v: %d lossless records", pass != nil, n)
		}
	}
	if payload[1] <= payload[0] {
		t.Errorf("compressed payloads %d bytes with the lossless pass-through, %d without", payload[1], payload[0])
	}
}
