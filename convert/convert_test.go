package convert_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	_ "github.com/tpconvert/tpconvert/codec/basic"
	_ "github.com/tpconvert/tpconvert/codec/intq"
	_ "github.com/tpconvert/tpconvert/codec/lossless"
	_ "github.com/tpconvert/tpconvert/codec/tenpakx"
	_ "github.com/tpconvert/tpconvert/codec/tenpakx2"
	"github.com/tpconvert/tpconvert/codec/tenpakx3"
	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/fixtures/gen"
	"github.com/tpconvert/tpconvert/formats/gguf"
	"github.com/tpconvert/tpconvert/formats/tpk"
	"github.com/tpconvert/tpconvert/internal/atomicfile"
	"github.com/tpconvert/tpconvert/internal/testkit"
	"github.com/tpconvert/tpconvert/stream"
	"github.com/tpconvert/tpconvert/tensor"
)

var tiny = gen.Presets["tiny"]

// small has tiny's tensors at a fifth of its size: for tests that convert
// with every codec or many times.
var small = gen.Presets["small"]

// micro is smaller still, for tests that run every codec several times;
// they keep the payloads even where a codec does not shrink such small
// matrices (AllowLarger).
var micro = gen.Config{Layers: 2, Hidden: 64, Intermediate: 128, Heads: 2, KVHeads: 1, Vocab: 128}

var (
	mustCodec    = testkit.MustCodec
	tensorHashes = testkit.TensorHashes
	noTemps      = testkit.NoTemps
)

func opts(t *testing.T, c string, workers int) convert.CompressOptions {
	return convert.CompressOptions{
		Options:  stream.Options{Workers: workers, MaxMemory: 64 << 20},
		Codec:    mustCodec(t, c),
		Selector: stream.Selector{Layers: stream.LayersAll},
	}
}

func sameTensors(t *testing.T, a, b string) {
	t.Helper()
	ha, ma := tensorHashes(t, a)
	hb, mb := tensorHashes(t, b)
	if len(ha) != len(hb) {
		t.Fatalf("%d tensors vs %d", len(ha), len(hb))
	}
	for k, v := range ha {
		if hb[k] != v {
			t.Errorf("tensor %s differs after the round trip", k)
		}
	}
	for i := range ma.Files {
		if !bytes.Equal(ma.Files[i].Metadata, mb.Files[i].Metadata) {
			t.Errorf("__metadata__ %s became %s", ma.Files[i].Metadata, mb.Files[i].Metadata)
		}
	}
	if ma.GGUF != nil && !bytes.Equal(ma.GGUF.KV, mb.GGUF.KV) {
		t.Error("GGUF metadata changed")
	}
}

func sameFileBytes(t *testing.T, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x, y) {
		t.Errorf("%s and %s differ", a, b)
	}
}

func TestSafetensorsLosslessRoundTrip(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "model.safetensors")
	if err := gen.WriteSafetensors(in, tiny, tensor.BF16, 1); err != nil {
		t.Fatal(err)
	}
	tpkPath := filepath.Join(dir, "model.tpk")
	rep, err := convert.CompressFile(context.Background(), in, tpkPath, opts(t, "none", 2))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Totals.Compressed != 0 || rep.Totals.Tensors != len(tiny.HFTensors()) {
		t.Errorf("report: %+v", rep.Totals)
	}
	out := filepath.Join(dir, "restored.safetensors")
	if _, err := convert.RestoreFile(context.Background(), tpkPath, out, convert.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	sameTensors(t, in, out)
	sameFileBytes(t, in, out)
	noTemps(t, dir)
}

func TestShardedCheckoutRoundTrip(t *testing.T) {
	dir := t.TempDir()
	ckpt := filepath.Join(dir, "ckpt")
	if err := gen.WriteCheckout(ckpt, tiny, tensor.F16, 2, 1<<20); err != nil {
		t.Fatal(err)
	}
	shards, _ := filepath.Glob(filepath.Join(ckpt, "*.safetensors"))
	if len(shards) < 3 {
		t.Fatalf("generator wrote %d shards, want at least 3", len(shards))
	}
	tpkPath := ckpt + ".tpk" // the CLI's default (TestDefaultCompressOutput)
	if _, err := convert.CompressFile(context.Background(), ckpt, tpkPath, opts(t, "none", 2)); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "restored")
	if _, err := convert.RestoreFile(context.Background(), tpkPath, out, convert.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	sameTensors(t, ckpt, out)
	for _, s := range append(shards, filepath.Join(ckpt, "model.safetensors.index.json")) {
		sameFileBytes(t, s, filepath.Join(out, filepath.Base(s)))
	}
	noTemps(t, dir)
}

func TestGGUFLosslessRoundTrip(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "m.gguf")
	if err := gen.WriteGGUF(in, tiny, 3); err != nil {
		t.Fatal(err)
	}
	tpkPath := filepath.Join(dir, "m.tpk")
	if _, err := convert.CompressFile(context.Background(), in, tpkPath, opts(t, "none", 1)); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "m2.gguf")
	if _, err := convert.RestoreFile(context.Background(), tpkPath, out, convert.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	sameTensors(t, in, out)
	sameFileBytes(t, in, out)
}

// TestGGUFInfoOrderRoundTrip: a GGUF file whose tensor infos are in
// another order than their data comes back byte for byte, the order kept
// in the .tpk index.
func TestGGUFInfoOrderRoundTrip(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain.gguf")
	if err := gen.WriteGGUF(plain, micro, 3); err != nil {
		t.Fatal(err)
	}
	r, err := gguf.Open(plain)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ts := r.Tensors()
	order := make([]string, len(ts))
	for i, t := range ts {
		order[len(ts)-1-i] = t.Name
	}
	var buf bytes.Buffer
	w, err := gguf.NewWriter(&buf, r.Meta().GGUF, order, ts)
	if err != nil {
		t.Fatal(err)
	}
	for i, ti := range ts {
		b, err := r.Bytes(i)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.WriteTensor(ti, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	in := filepath.Join(dir, "m.gguf")
	if err := os.WriteFile(in, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	tpkPath := filepath.Join(dir, "m.tpk")
	if _, err := convert.CompressFile(context.Background(), in, tpkPath, opts(t, "none", 1)); err != nil {
		t.Fatal(err)
	}
	tr, err := tpk.Open(tpkPath)
	if err != nil {
		t.Fatal(err)
	}
	got := tr.Index().GGUFInfoOrder
	tr.Close()
	if fmt.Sprint(got) != fmt.Sprint(order) {
		t.Fatalf("index info order %v, want %v", got, order)
	}
	out := filepath.Join(dir, "m2.gguf")
	if _, err := convert.RestoreFile(context.Background(), tpkPath, out, convert.RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	sameFileBytes(t, in, out)
}

func TestLossyRestoreKeepsUntouchedTensors(t *testing.T) {
	for _, kind := range []string{"safetensors", "gguf"} {
		t.Run(kind, func(t *testing.T) {
			dir := t.TempDir()
			in := filepath.Join(dir, "m."+kind)
			if err := gen.WriteModel(in, tiny, tensor.F32, 3); err != nil {
				t.Fatal(err)
			}
			tpkPath := filepath.Join(dir, "m.tpk")
			o := opts(t, "f16", 2)
			o.AllowLarger = true // f16 of the GGUF's 4-bit tensors is larger
			rep, err := convert.CompressFile(context.Background(), in, tpkPath, o)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Totals.Compressed != 7*tiny.Layers {
				t.Errorf("compressed %d tensors, want %d", rep.Totals.Compressed, 7*tiny.Layers)
			}
			out := filepath.Join(dir, "r."+kind)
			if _, err := convert.RestoreFile(context.Background(), tpkPath, out, convert.RestoreOptions{}); err != nil {
				t.Fatal(err)
			}
			hIn, mIn := tensorHashes(t, in)
			hOut, mOut := tensorHashes(t, out)
			compressed := map[string]bool{}
			for _, tr := range rep.Tensors {
				if tr.Lossy {
					compressed[tr.Name] = true
				}
			}
			for k, v := range hIn {
				name := k[:strings.LastIndex(k, "/")]
				if compressed[name] {
					continue
				}
				if hOut[k] != v {
					t.Errorf("untouched tensor %s changed", k)
				}
			}
			if kind == "gguf" && !bytes.Equal(mIn.GGUF.KV, mOut.GGUF.KV) {
				t.Error("GGUF metadata changed")
			}
			if kind == "safetensors" && !bytes.Equal(mIn.Files[0].Metadata, mOut.Files[0].Metadata) {
				t.Error("__metadata__ changed")
			}
		})
	}
}

func TestWorkersGiveIdenticalFiles(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "m.safetensors")
	if err := gen.WriteSafetensors(in, micro, tensor.F32, 4); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// A budget of 8 KiB processes every tensor of micro that allows it in
	// row chunks (see TestChunkedReservations in stream).
	const chunked = 8 << 10
	// tenpak_x_v2 holds a tensor's payload beside its chunks: 32 KiB
	// encodes micro's matrices in chunks (see TestChunkedRowEncoder).
	const chunkedHeld = 32 << 10
	// tenpak_x_v3 encodes a tensor larger than the budget from windows of
	// its rows (codec.StreamEncoder), in row groups of 512 weights here.
	oldGroups := tenpakx3.GroupWeights
	tenpakx3.GroupWeights = 512
	defer func() { tenpakx3.GroupWeights = oldGroups }()
	for _, c := range codec.Names() {
		var files []string
		budgets := []int64{64 << 20, chunked}
		if c == "tenpak_x_v2" {
			budgets = append(budgets, chunkedHeld)
		}
		for _, w := range []int{1, 2, 5} {
			for _, budget := range budgets {
				out := filepath.Join(dir, fmt.Sprintf("%s%d-%d.tpk", c, w, budget))
				o := opts(t, c, w)
				o.MaxMemory = budget
				o.AllowLarger = true
				if _, err := convert.CompressFile(ctx, in, out, o); err != nil {
					t.Fatal(err)
				}
				files = append(files, out)
			}
		}
		for _, f := range files[1:] {
			sameFileBytes(t, files[0], f)
		}
		// Restore, whole and in chunks, with and without a dtype change.
		for _, dt := range []tensor.DType{tensor.Invalid, tensor.F16} {
			var outs []string
			for _, w := range []int{1, 5} {
				for _, budget := range []int64{64 << 20, chunked} {
					out := filepath.Join(dir, fmt.Sprintf("%s-%s%d-%d.safetensors", c, dt, w, budget))
					ro := convert.RestoreOptions{RestoreOptions: stream.RestoreOptions{
						Options: stream.Options{Workers: w, MaxMemory: budget}, DType: dt}}
					if _, err := convert.RestoreFile(ctx, files[0], out, ro); err != nil {
						t.Fatal(err)
					}
					outs = append(outs, out)
				}
			}
			for _, f := range outs[1:] {
				sameFileBytes(t, outs[0], f)
			}
		}
	}
	// sameAcross compresses in for each worker count and budget with the
	// options o gives and checks the files are the same bytes.
	sameAcross := func(label, in string, workers []int, budgets []int64, o func(w int, budget int64) convert.CompressOptions) {
		var files []string
		for _, w := range workers {
			for _, budget := range budgets {
				out := filepath.Join(dir, fmt.Sprintf("%s%d-%d.tpk", label, w, budget))
				if _, err := convert.CompressFile(ctx, in, out, o(w, budget)); err != nil {
					t.Fatal(err)
				}
				files = append(files, out)
			}
		}
		for _, f := range files[1:] {
			sameFileBytes(t, files[0], f)
		}
	}
	rated := func(c codec.Codec) func(w int, budget int64) convert.CompressOptions {
		return func(w int, budget int64) convert.CompressOptions {
			return convert.CompressOptions{Options: stream.Options{Workers: w, MaxMemory: budget}, Codec: c,
				Selector: stream.Selector{Layers: stream.LayersAll}, Rate: &convert.RateOptions{BPW: 12, SampleRows: 8}}
		}
	}
	// Rate control (a grid per tensor, importance weights), encoded whole
	// and in row chunks.
	sameAcross("bpw", in, []int{1, 2, 5}, []int64{64 << 20, chunkedHeld}, rated(nil))
	// tenpak_x_v3 under rate control (size caps, importance), whole and
	// streamed.
	sameAcross("bpw3-", in, []int{1, 2, 5}, []int64{64 << 20, chunked}, rated(mustCodec(t, "tenpak_x_v3")))
	// tenpak_x_v3 streamed from GGUF block types (Q8_0, Q4_0, Q4_1, F16
	// rows), whole and in windows.
	gin := filepath.Join(dir, "m.gguf")
	if err := gen.WriteGGUF(gin, micro, 4); err != nil {
		t.Fatal(err)
	}
	sameAcross("gguf3-", gin, []int{1, 5}, []int64{64 << 20, chunked}, func(w int, budget int64) convert.CompressOptions {
		o := opts(t, "tenpak_x_v3", w)
		o.MaxMemory, o.AllowLarger = budget, true
		return o
	})
	// The lossless codec, itself and as the pass-through of a lossy one,
	// coded and restored whole and in its chunks (codec.ChunkEncoder):
	// wide's embedding and MLP matrices are two to three chunks each.
	wide := gen.Config{Layers: 1, Hidden: 64, Intermediate: 1100, Heads: 2, KVHeads: 1, Vocab: 3000}
	for _, dt := range []tensor.DType{tensor.BF16, tensor.F32} {
		win := filepath.Join(dir, fmt.Sprintf("wide-%s.safetensors", dt))
		if err := gen.WriteSafetensors(win, wide, dt, 5); err != nil {
			t.Fatal(err)
		}
		for _, c := range []string{"lossless", "f16"} {
			var files, outs []string
			for _, w := range []int{1, 2, 5} {
				for _, budget := range []int64{64 << 20, 1 << 20} {
					out := filepath.Join(dir, fmt.Sprintf("wide-%s-%s%d-%d.tpk", dt, c, w, budget))
					o := opts(t, c, w)
					o.MaxMemory, o.Selector = budget, stream.Selector{Layers: stream.LayersAttn}
					o.PassThrough = mustCodec(t, "lossless").(codec.ByteCodec)
					if _, err := convert.CompressFile(ctx, win, out, o); err != nil {
						t.Fatal(err)
					}
					files = append(files, out)
					r := filepath.Join(dir, fmt.Sprintf("wide-%s-%s%d-%d.safetensors", dt, c, w, budget))
					ro := convert.RestoreOptions{RestoreOptions: stream.RestoreOptions{Options: stream.Options{Workers: w, MaxMemory: budget}}}
					if _, err := convert.RestoreFile(ctx, files[0], r, ro); err != nil {
						t.Fatal(err)
					}
					outs = append(outs, r)
				}
			}
			for _, f := range files[1:] {
				sameFileBytes(t, files[0], f)
			}
			for _, f := range outs[1:] {
				sameFileBytes(t, outs[0], f)
			}
			if c == "lossless" {
				sameFileBytes(t, win, outs[0])
			}
		}
	}
	// GGUF block types stored unchanged, dequantized whole and in chunks.
	gg := filepath.Join(dir, "m.gguf")
	if err := gen.WriteGGUF(gg, tiny, 3); err != nil {
		t.Fatal(err)
	}
	tp := filepath.Join(dir, "gguf.tpk")
	if _, err := convert.CompressFile(ctx, gg, tp, opts(t, "none", 2)); err != nil {
		t.Fatal(err)
	}
	var outs []string
	for _, w := range []int{1, 2} {
		for _, budget := range []int64{64 << 20, 64 << 10} {
			out := filepath.Join(dir, fmt.Sprintf("deq%d-%d.gguf", w, budget))
			ro := convert.RestoreOptions{RestoreOptions: stream.RestoreOptions{
				Options: stream.Options{Workers: w, MaxMemory: budget}, Dequantize: tensor.F16}}
			if _, err := convert.RestoreFile(ctx, tp, out, ro); err != nil {
				t.Fatal(err)
			}
			outs = append(outs, out)
		}
	}
	for _, f := range outs[1:] {
		sameFileBytes(t, outs[0], f)
	}
}

func TestOutputSafety(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "m.safetensors")
	if err := gen.WriteSafetensors(in, tiny, tensor.BF16, 1); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(in)
	ctx := context.Background()
	if _, err := convert.CompressFile(ctx, in, in, opts(t, "none", 1)); err == nil || !strings.Contains(err.Error(), "input") {
		t.Errorf("compressing onto the input: err = %v", err)
	}
	out := filepath.Join(dir, "m.tpk")
	if err := os.WriteFile(out, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := convert.CompressFile(ctx, in, out, opts(t, "none", 1)); !errors.Is(err, atomicfile.ErrExists) {
		t.Errorf("existing output: err = %v", err)
	}
	if b, _ := os.ReadFile(out); string(b) != "precious" {
		t.Error("existing output was replaced without Overwrite")
	}
	o := opts(t, "none", 1)
	o.Overwrite = true
	if _, err := convert.CompressFile(ctx, in, out, o); err != nil {
		t.Fatal(err)
	}
	if _, err := convert.RestoreFile(ctx, out, out, convert.RestoreOptions{Overwrite: true}); err == nil {
		t.Error("restore onto its own input succeeded")
	}
	if _, err := convert.RestoreFile(ctx, out, in, convert.RestoreOptions{}); !errors.Is(err, atomicfile.ErrExists) {
		t.Errorf("restore onto an existing file without Overwrite: err = %v", err)
	}
	after, _ := os.ReadFile(in)
	if !bytes.Equal(before, after) {
		t.Error("input changed")
	}
	noTemps(t, dir)
}

func TestCancelLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "m.safetensors")
	if err := gen.WriteSafetensors(in, tiny, tensor.F32, 1); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	o := opts(t, "f16", 1)
	n := 0
	o.Progress = func(tensor.Info, int64) {
		if n++; n == 3 {
			cancel()
		}
	}
	out := filepath.Join(dir, "m.tpk")
	_, err := convert.CompressFile(ctx, in, out, o)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Error("output exists after cancellation")
	}
	noTemps(t, dir)
}

func TestBadInputs(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, b, 0o644)
		return p
	}
	for name, path := range map[string]string{
		"missing":         filepath.Join(dir, "nope.safetensors"),
		"empty":           write("empty.safetensors", nil),
		"text":            write("text.safetensors", []byte("hello world, not a model")),
		"huge header":     write("h.safetensors", append([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, "{}"...)),
		"truncated gguf":  write("t.gguf", []byte("GGUF\x03\x00\x00\x00\x05")),
		"tpk as input":    write("x.tpk", []byte("\x89TPK\r\n\x1a\n")),
		"empty directory": func() string { d := filepath.Join(dir, "emptydir"); os.Mkdir(d, 0o755); return d }(),
	} {
		t.Run(name, func(t *testing.T) {
			out := filepath.Join(dir, "out-"+strings.ReplaceAll(name, " ", "_")+".tpk")
			_, err := convert.CompressFile(context.Background(), path, out, opts(t, "none", 1))
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("multi-line error %q", err)
			}
			if _, serr := os.Stat(out); serr == nil {
				t.Error("output file created")
			}
		})
	}
	noTemps(t, dir)
}

// TestRestoredEqualsCodecDecode checks that every compressed tensor of a
// restored file holds exactly what the codec decodes from its payload, in
// F32 (and for tenpak_x_v3, decoded straight to the dtype as a
// codec.FloatDecoder, in F16, BF16 and F64 too, whole and in row chunks),
// and that the file's other tensors are the source's bytes.
func TestRestoredEqualsCodecDecode(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "m.safetensors")
	if err := gen.WriteSafetensors(in, micro, tensor.F32, 5); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		to   tensor.DType
		mem  int64
	}{
		{"tenpak_x_v1", tensor.F32, 0}, {"int4", tensor.F32, 0}, {"int8", tensor.F32, 0},
		{"tenpak_x_v3", tensor.F32, 0}, {"tenpak_x_v3", tensor.F16, 0}, {"tenpak_x_v3", tensor.BF16, 0},
		{"tenpak_x_v3", tensor.F64, 0}, {"tenpak_x_v3", tensor.F16, 48 << 10},
	} {
		name := tc.name
		t.Run(fmt.Sprintf("%s/%s/%d", name, tc.to, tc.mem), func(t *testing.T) {
			sub := t.TempDir()
			tpkPath := filepath.Join(sub, name+".tpk")
			o := opts(t, name, 2)
			o.AllowLarger = true
			if _, err := convert.CompressFile(context.Background(), in, tpkPath, o); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(sub, name+".safetensors")
			ro := convert.RestoreOptions{}
			ro.DType, ro.MaxMemory = tc.to, tc.mem
			if _, err := convert.RestoreFile(context.Background(), tpkPath, out, ro); err != nil {
				t.Fatal(err)
			}
			r, err := tpk.Open(tpkPath)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			restored := testkit.OpenSource(t, out)
			source := testkit.OpenSource(t, in)
			byName := map[string]int{}
			for i, ti := range restored.Tensors() {
				byName[ti.Name] = i
			}
			compressed := 0
			for i, e := range r.Entries() {
				got, err := restored.Bytes(byName[e.Name])
				if err != nil {
					t.Fatal(err)
				}
				p, err := r.Payload(i)
				if err != nil {
					t.Fatal(err)
				}
				if e.CodecID == codec.IDNone {
					if tc.to != tensor.F32 {
						continue // converted
					}
					if !bytes.Equal(got, p) {
						t.Errorf("%s: untouched tensor changed", e.Name)
					}
					continue
				}
				compressed++
				c, err := codec.ByID(e.CodecID)
				if err != nil {
					t.Fatal(err)
				}
				x := make([]float32, e.Info().Elems())
				if err := c.Decode(x, p, e.Info(), e.CodecVersion); err != nil {
					t.Fatal(err)
				}
				want := make([]byte, int64(len(x))*tc.to.BlockBytes())
				tensor.FromFloat32(want, tc.to, x)
				if !bytes.Equal(got, want) {
					t.Errorf("%s: restored values differ from the codec's decode", e.Name)
				}
				src, _ := source.Bytes(byName[e.Name])
				if bytes.Equal(got, src) {
					t.Errorf("%s: a lossy codec reproduced the source exactly; was it applied?", e.Name)
				}
			}
			if compressed != 7*micro.Layers {
				t.Errorf("%d compressed tensors, want %d", compressed, 7*micro.Layers)
			}
		})
	}
}

// TestNoTensorGrows: whatever the codec and source dtype, a compressed
// tensor's payload is smaller than its source bytes; a codec that cannot
// shrink a tensor leaves it stored unchanged, bit-exact, with a note.
func TestNoTensorGrows(t *testing.T) {
	dir := t.TempDir()
	sources := map[string]func(string) error{
		"f32.safetensors":  func(p string) error { return gen.WriteSafetensors(p, micro, tensor.F32, 1) },
		"bf16.safetensors": func(p string) error { return gen.WriteSafetensors(p, micro, tensor.BF16, 1) },
		"q.gguf":           func(p string) error { return gen.WriteGGUF(p, micro, 1) },
	}
	for name, write := range sources {
		in := filepath.Join(dir, name)
		if err := write(in); err != nil {
			t.Fatal(err)
		}
		for _, c := range codec.Names() {
			out := filepath.Join(dir, name+"."+c+".tpk")
			o := opts(t, c, 2)
			o.Selector.Layers = stream.LayersWeights
			rep, err := convert.CompressFile(context.Background(), in, out, o)
			if err != nil {
				t.Fatalf("%s %s: %v", name, c, err)
			}
			r, err := tpk.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			unchanged := 0
			for i, e := range r.Entries() {
				if e.CodecID != codec.IDNone && e.PayloadSize >= e.SourceSize {
					t.Errorf("%s %s: %s stored in %d bytes from %d", name, c, e.Name, e.PayloadSize, e.SourceSize)
				}
				if strings.Contains(rep.Tensors[i].Note, stream.NoteNotSmaller) {
					unchanged++
					if e.CodecID != codec.IDNone || e.PayloadSize != e.SourceSize {
						t.Errorf("%s %s: %s noted as unchanged but stored with %s", name, c, e.Name, e.Codec)
					}
				}
			}
			r.Close()
			// f16 and bf16 cannot shrink a BF16 file: every selected
			// tensor must be noted, not silently passed over.
			if name == "bf16.safetensors" && (c == "f16" || c == "bf16") && unchanged != 7*micro.Layers+2 {
				t.Errorf("%s %s: %d tensors noted as not smaller, want %d", name, c, unchanged, 7*micro.Layers+2)
			}
		}
	}
}

// TestProgressWithinTensor: the progress callback advances while a large
// tensor is being encoded (not only when it is written), and every
// tensor's calls add up to its size.
func TestProgressWithinTensor(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "m.safetensors")
	if err := gen.WriteSafetensors(in, tiny, tensor.F32, 1); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	calls := map[string][]int64{}
	o := opts(t, "tenpak_x_v2", 2)
	o.Progress = func(ti tensor.Info, n int64) {
		mu.Lock()
		calls[ti.Name] = append(calls[ti.Name], n)
		mu.Unlock()
	}
	var total int64
	o.OnStart = func(n int64) { total = n }
	rep, err := convert.CompressFile(context.Background(), in, filepath.Join(dir, "m.tpk"), o)
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	within := 0
	for _, tr := range rep.Tensors {
		var s int64
		for _, n := range calls[tr.Name] {
			if n <= 0 {
				t.Errorf("%s: progress call of %d bytes", tr.Name, n)
			}
			s += n
		}
		if s != tr.SourceBytes {
			t.Errorf("%s: progress adds up to %d bytes, want %d", tr.Name, s, tr.SourceBytes)
		}
		sum += s
		// 704×256 weights are coded in blocks of 128 rows: 6 calls
		// during the encoding, one when written.
		if tr.Elems == 704*256 {
			if len(calls[tr.Name]) < 6 {
				t.Errorf("%s: %d progress calls, want one per block of rows and one at the end", tr.Name, len(calls[tr.Name]))
			}
			within++
		}
	}
	if within == 0 || sum != total {
		t.Errorf("%d large tensors seen; progress %d bytes of %d", within, sum, total)
	}
}
