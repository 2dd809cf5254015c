package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/codec/numtest"
	"github.com/tpconvert/tpconvert/convert"
	"github.com/tpconvert/tpconvert/fixtures/gen"
	"github.com/tpconvert/tpconvert/formats/tpk"
	"github.com/tpconvert/tpconvert/stream"
	"github.com/tpconvert/tpconvert/tensor"

	// The crafted .tpk files hold records of every codec.
	_ "github.com/tpconvert/tpconvert/codec/intq"
	_ "github.com/tpconvert/tpconvert/codec/lossless"
	_ "github.com/tpconvert/tpconvert/codec/tenpakx"
)

// malMemLimit is the most a command may allocate on a malformed input.
const malMemLimit = 256 << 20

// ---- safetensors ----------------------------------------------------------

// stFile assembles a safetensors file: an 8-byte little-endian header
// length, the header and the data section.
func stFile(hdr string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	return append(append(b, hdr...), data...)
}

const stHeader = `{"__metadata__":{"format":"pt"},` +
	`"model.layers.0.mlp.up_proj.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},` +
	`"model.norm.weight":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]}}`

// stData is the data section of stHeader: six F32 and four BF16 values.
func stData() []byte {
	var b []byte
	for i := range 6 {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(float32(i)-2.5))
	}
	for range 4 {
		b = binary.LittleEndian.AppendUint16(b, 0x3f80) // 1.0
	}
	return b
}

// ---- GGUF -----------------------------------------------------------------

type ggTensor struct {
	name string
	ne   []uint64 // innermost first
	typ  uint32
	off  uint64
}

// ggLayout is a GGUF file and the offsets of its sections.
type ggLayout struct {
	b                                   []byte
	kvStart, infoStart, infoEnd, dataAt int
}

func ggString(b []byte, s string) []byte {
	return append(binary.LittleEndian.AppendUint64(b, uint64(len(s))), s...)
}

func ggKVString(key, val string) []byte {
	b := ggString(nil, key)
	b = binary.LittleEndian.AppendUint32(b, 8) // GGUF_TYPE_STRING
	return ggString(b, val)
}

func ggKVU32(key string, v uint32) []byte {
	b := ggString(nil, key)
	b = binary.LittleEndian.AppendUint32(b, 4) // GGUF_TYPE_UINT32
	return binary.LittleEndian.AppendUint32(b, v)
}

// ggBuild lays out a GGUF file (magic, version, counts, key/value section,
// tensor infos, padding to align, data).
func ggBuild(version uint32, nTensors, nKV uint64, kv []byte, ts []ggTensor, align int, data []byte) ggLayout {
	var l ggLayout
	b := []byte("GGUF")
	b = binary.LittleEndian.AppendUint32(b, version)
	b = binary.LittleEndian.AppendUint64(b, nTensors)
	b = binary.LittleEndian.AppendUint64(b, nKV)
	l.kvStart = len(b)
	b = append(b, kv...)
	l.infoStart = len(b)
	for _, t := range ts {
		b = ggString(b, t.name)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(t.ne)))
		for _, d := range t.ne {
			b = binary.LittleEndian.AppendUint64(b, d)
		}
		b = binary.LittleEndian.AppendUint32(b, t.typ)
		b = binary.LittleEndian.AppendUint64(b, t.off)
	}
	l.infoEnd = len(b)
	for len(b)%align != 0 {
		b = append(b, 0)
	}
	l.dataAt = len(b)
	l.b = append(b, data...)
	return l
}

func ggKV() []byte {
	return append(ggKVString("general.architecture", "llama"), ggKVU32("general.alignment", 32)...)
}

// ggTensors are a F32 [8], b F16 [2,16] and c Q8_0 [2,32], 164 data bytes.
func ggTensors() []ggTensor {
	return []ggTensor{
		{"a", []uint64{8}, 0, 0},
		{"b", []uint64{16, 2}, 1, 32},
		{"c", []uint64{32, 2}, 8, 96},
	}
}

func ggData() []byte {
	var b []byte
	for i := range 8 {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(float32(i)))
	}
	for range 32 {
		b = binary.LittleEndian.AppendUint16(b, 0x3c00) // 1.0
	}
	for range 2 { // Q8_0 blocks: FP16 scale, 32 int8 codes
		b = binary.LittleEndian.AppendUint16(b, 0x3c00)
		for k := range 32 {
			b = append(b, byte(k-16))
		}
	}
	return b
}

func ggGood() ggLayout { return ggBuild(3, 3, 2, ggKV(), ggTensors(), 32, ggData()) }

// ---- .tpk -----------------------------------------------------------------

// tpkSource writes the safetensors checkpoint the .tpk cases start from:
// two projection matrices (compressed by the codec under test), an
// embedding and a norm (stored unchanged).
func tpkSource(t testing.TB, path string) {
	t.Helper()
	type ent struct {
		name  string
		dt    string
		shape [2]int
	}
	ents := []ent{
		{"model.embed_tokens.weight", "BF16", [2]int{16, 32}},
		{"model.layers.0.self_attn.q_proj.weight", "F32", [2]int{16, 32}},
		{"model.layers.0.mlp.down_proj.weight", "F32", [2]int{32, 16}},
		{"model.norm.weight", "F32", [2]int{1, 32}},
	}
	var hdr strings.Builder
	var data []byte
	hdr.WriteString(`{"__metadata__":{"format":"pt"}`)
	for k, e := range ents {
		n := e.shape[0] * e.shape[1]
		start := len(data)
		for i := range n {
			v := float32(math.Sin(float64(7*i+k))) * 0.1
			if e.dt == "BF16" {
				data = binary.LittleEndian.AppendUint16(data, uint16(math.Float32bits(v)>>16))
			} else {
				data = binary.LittleEndian.AppendUint32(data, math.Float32bits(v))
			}
		}
		shape := fmt.Sprintf("[%d,%d]", e.shape[0], e.shape[1])
		if e.shape[0] == 1 {
			shape = fmt.Sprintf("[%d]", e.shape[1])
		}
		fmt.Fprintf(&hdr, `,%q:{"dtype":%q,"shape":%s,"data_offsets":[%d,%d]}`, e.name, e.dt, shape, start, len(data))
	}
	hdr.WriteString("}")
	if err := os.WriteFile(path, stFile(hdr.String(), data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// tpkFiles compresses the tpkSource checkpoint with every codec and the
// GGUF file of ggGood with none, returning the .tpk bytes by codec name
// ("gguf" for the latter).
func tpkFiles(t testing.TB) map[string][]byte {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "src.safetensors")
	tpkSource(t, src)
	ggPath := filepath.Join(dir, "src.gguf")
	if err := os.WriteFile(ggPath, ggGood().b, 0o644); err != nil {
		t.Fatal(err)
	}
	ckpt := filepath.Join(dir, "ckpt")
	if err := gen.WriteCheckout(ckpt, gen.Presets["tiny"], tensor.F16, 1, 1<<20); err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, name := range []string{"none", "f16", "bf16", "int8", "int4", "tenpak_x_v1", "gguf", "ckpt"} {
		in, cname := src, name
		switch name {
		case "gguf":
			in, cname = ggPath, "none"
		case "ckpt":
			in, cname = ckpt, "none"
		}
		c, err := codec.New(cname, numtest.Options(cname, codec.Options{Rank: 4, GroupSize: 8}))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name+".tpk")
		rep, err := convert.CompressFile(context.Background(), in, p, convert.CompressOptions{
			Options: stream.Options{Workers: 1}, Codec: c, Selector: stream.Selector{Layers: stream.LayersAll}, AllowLarger: true})
		if err != nil {
			t.Fatalf("compress with %s: %v", name, err)
		}
		if cname != "none" && rep.Totals.Compressed != 2 {
			t.Fatalf("codec %s compressed %d tensors, want 2", name, rep.Totals.Compressed)
		}
		if out[name], err = os.ReadFile(p); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// tpkParts reads a .tpk file's metadata, entries and payloads.
func tpkParts(t testing.TB, b []byte) (*tpk.Index, [][]byte) {
	t.Helper()
	r, err := tpk.NewReader(bytes.NewReader(b), int64(len(b)), "x.tpk")
	if err != nil {
		t.Fatal(err)
	}
	var ps [][]byte
	for i := range r.Entries() {
		p, err := r.Payload(i)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, slices.Clone(p))
	}
	ix := *r.Index()
	ix.Tensors = slices.Clone(ix.Tensors)
	return &ix, ps
}

// tpkRebuild rewrites a .tpk with tpk.Writer after edit has changed its
// entries and payloads: every checksum is valid, so only the damage edit
// made remains.
func tpkRebuild(t testing.TB, b []byte, edit func(ix *tpk.Index, ps [][]byte)) []byte {
	t.Helper()
	ix, ps := tpkParts(t, b)
	edit(ix, ps)
	if ix.Source.GGUF != nil {
		ix.Source.GGUF.InfoOrder = ix.GGUFInfoOrder
	}
	var buf bytes.Buffer
	w, err := tpk.NewWriter(&buf, ix.Source)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range ix.Tensors {
		if err := w.WriteRecord(e, ps[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tpkLastPayload returns the offset of a byte inside the payload of the last
// record of a .tpk file.
func tpkLastPayload(t testing.TB, b []byte) int {
	ix, _ := tpkParts(t, b)
	e := ix.Tensors[len(ix.Tensors)-1]
	return int(e.PayloadOffset + e.PayloadSize/2)
}

// malFind returns the position of the entry whose name contains s.
func malFind(ix *tpk.Index, s string) int {
	for i, e := range ix.Tensors {
		if strings.Contains(e.Name, s) {
			return i
		}
	}
	panic("no tensor " + s)
}

var malCRCTable = crc32.MakeTable(crc32.Castagnoli)

// tpkFooter returns the index offset and length of a .tpk file.
func tpkFooter(b []byte) (off, n int) {
	f := b[len(b)-tpk.FooterSize:]
	return int(binary.LittleEndian.Uint64(f[16:])), int(binary.LittleEndian.Uint64(f[24:]))
}

// tpkWithIndex replaces the index of a .tpk by f(index) and fixes the footer
// (length and checksum), so the reader gets past the checksum to the
// damage.
func tpkWithIndex(b []byte, f func(s string) string) []byte {
	off, n := tpkFooter(b)
	js := f(string(b[off : off+n]))
	out := append(slices.Clone(b[:off]), js...)
	var ft [tpk.FooterSize]byte
	copy(ft[:], b[len(b)-tpk.FooterSize:])
	binary.LittleEndian.PutUint32(ft[12:], crc32.Checksum([]byte(js), malCRCTable))
	binary.LittleEndian.PutUint64(ft[24:], uint64(len(js)))
	return append(out, ft[:]...)
}

// tpkWithIndexJSON edits the decoded index and re-encodes it.
func tpkWithIndexJSON(t testing.TB, b []byte, f func(ix *tpk.Index)) []byte {
	return tpkWithIndex(b, func(s string) string {
		var ix tpk.Index
		if err := json.Unmarshal([]byte(s), &ix); err != nil {
			t.Fatal(err)
		}
		f(&ix)
		js, err := json.Marshal(&ix)
		if err != nil {
			t.Fatal(err)
		}
		return string(js)
	})
}

func flipBit(b []byte, off int, mask byte) []byte {
	c := slices.Clone(b)
	c[off] ^= mask
	return c
}

func with64(b []byte, off int, v uint64) []byte {
	c := slices.Clone(b)
	binary.LittleEndian.PutUint64(c[off:], v)
	return c
}

func with32(b []byte, off int, v uint32) []byte {
	c := slices.Clone(b)
	binary.LittleEndian.PutUint32(c[off:], v)
	return c
}

// ---- the table ------------------------------------------------------------

// malformed is one damaged input and what the commands must make of it.
type malformed struct {
	name  string
	file  string            // input name in a fresh directory
	data  []byte            // the input file
	dir   map[string][]byte // or: the input is a checkout directory of these files
	fail  []string          // commands that must fail with exit status 1
	ok    []string          // commands that must succeed (the damage is beyond what they read)
	want  string            // the error must contain this (case-insensitive; |-separated alternatives): it names the problem
	extra []string          // flags for every command
}

var (
	srcCmds = []string{"compress", "inspect"}
	tpkCmds = []string{"inspect", "verify", "restore"}
	recCmds = []string{"verify", "restore"}
)

func malformedCases(t testing.TB) []malformed {
	st := stFile(stHeader, stData())
	hdrEnd := 8 + len(stHeader)
	gg := ggGood()
	tp := tpkFiles(t)
	good := tp["int4"]
	idxOff, idxLen := tpkFooter(good)
	ix, _ := tpkParts(t, good)
	q := ix.Tensors[malFind(ix, "q_proj")]
	norm := ix.Tensors[malFind(ix, "model.norm")]
	stReplace := func(old, new string) []byte {
		h := strings.Replace(stHeader, old, new, 1)
		if h == stHeader {
			t.Fatalf("%q not in the header", old)
		}
		return stFile(h, stData())
	}
	ggInfo := func(ts func([]ggTensor) []ggTensor) []byte {
		return ggBuild(3, 3, 2, ggKV(), ts(ggTensors()), 32, ggData()).b
	}
	idxReplace := func(b []byte, old, new string) []byte {
		return tpkWithIndex(b, func(s string) string {
			r := strings.Replace(s, old, new, 1)
			if r == s {
				t.Fatalf("%q not in the index", old)
			}
			return r
		})
	}
	codecRecord := func(codecName string, edit func(e *tpk.Entry, p []byte) []byte) []byte {
		return tpkRebuild(t, tp[codecName], func(ix *tpk.Index, ps [][]byte) {
			i := malFind(ix, "q_proj")
			ps[i] = edit(&ix.Tensors[i], slices.Clone(ps[i]))
		})
	}
	// lie makes q_proj claim a shape of n elements (index and record
	// header agree, sizes are consistent, checksums valid) while its
	// payload stays that of the real 16×32 matrix.
	lie := func(codecName string, shape ...int64) []byte {
		return codecRecord(codecName, func(e *tpk.Entry, p []byte) []byte {
			e.Shape = shape
			sz, err := tensor.ByteSize(e.DType, shape)
			if err != nil {
				t.Fatal(err)
			}
			e.SourceSize = sz
			return p
		})
	}

	return []malformed{
		// safetensors: truncations at every section boundary
		{name: "st empty file", file: "m.safetensors", data: nil, fail: srcCmds, want: "unknown file format"},
		{name: "st inside length prefix", file: "m.safetensors", data: st[:5], fail: srcCmds, want: "unknown file format"},
		{name: "st inside header", file: "m.safetensors", data: st[:hdrEnd/2], fail: srcCmds, want: "header"},
		{name: "st at end of header", file: "m.safetensors", data: st[:hdrEnd], fail: srcCmds, want: "data"},
		{name: "st inside data", file: "m.safetensors", data: st[:len(st)-3], fail: srcCmds, want: "data"},
		// lying length fields
		{name: "st header length past end", file: "m.safetensors", data: with64(st, 0, uint64(len(st))), fail: srcCmds, want: "header"},
		{name: "st header length 2^63", file: "m.safetensors", data: with64(st, 0, 1<<63), fail: srcCmds, want: "header"},
		{name: "st header length short", file: "m.safetensors", data: with64(st, 0, uint64(len(stHeader)-10)), fail: srcCmds, want: "json"},
		{name: "st header not json", file: "m.safetensors", data: stFile(`{"a":[1,2}`, nil), fail: srcCmds, want: "json"},
		// offsets and shapes
		{name: "st offsets past data", file: "m.safetensors", data: stReplace("[24,32]", "[24,40]"), fail: srcCmds, want: "model.norm.weight"},
		{name: "st overlapping offsets", file: "m.safetensors", data: stReplace("[24,32]", "[16,24]"), fail: srcCmds, want: "overlap"},
		{name: "st reversed offsets", file: "m.safetensors", data: stReplace("[24,32]", "[32,24]"), fail: srcCmds, want: "model.norm.weight"},
		{name: "st offsets disagree with shape", file: "m.safetensors", data: stReplace(`"shape":[4]`, `"shape":[5]`), fail: srcCmds, want: "model.norm.weight"},
		{name: "st overflowing shape", file: "m.safetensors", data: stReplace("[2,3]", "[4294967296,4294967296,16]"), fail: srcCmds, want: "up_proj"},
		{name: "st negative dimension", file: "m.safetensors", data: stReplace("[2,3]", "[-2,-3]"), fail: srcCmds, want: "up_proj"},
		{name: "st unknown dtype", file: "m.safetensors", data: stReplace(`"BF16"`, `"Q4"`), fail: srcCmds, want: "dtype"},
		{name: "st duplicate tensor", file: "m.safetensors", data: stReplace(`"model.norm.weight"`, `"model.layers.0.mlp.up_proj.weight"`), fail: srcCmds, want: "up_proj"},
		{name: "st bad metadata", file: "m.safetensors", data: stReplace(`{"format":"pt"}`, `{"format":1}`), fail: srcCmds, want: "metadata"},
		{name: "st checkout index names a missing shard", file: "ckpt", dir: map[string][]byte{
			"model-00001-of-00001.safetensors": st,
			"model.safetensors.index.json":     []byte(`{"weight_map":{"model.norm.weight":"model-00002-of-00002.safetensors"}}`),
		}, fail: srcCmds, want: "model-00002-of-00002.safetensors"},
		{name: "st checkout index not json", file: "ckpt", dir: map[string][]byte{
			"model-00001-of-00001.safetensors": st,
			"model.safetensors.index.json":     []byte(`{"weight_map":`),
		}, fail: srcCmds, want: "index"},

		// GGUF: truncations at every section boundary
		{name: "gguf inside magic", file: "m.gguf", data: gg.b[:2], fail: srcCmds, want: "unknown file format"},
		{name: "gguf bad magic", file: "m.gguf", data: append([]byte("GGUX"), gg.b[4:]...), fail: srcCmds, want: "unknown file format"},
		{name: "gguf inside version", file: "m.gguf", data: gg.b[:6], fail: srcCmds, want: "version"},
		{name: "gguf inside counts", file: "m.gguf", data: gg.b[:12], fail: srcCmds, want: "tensor_count"},
		{name: "gguf inside key/value section", file: "m.gguf", data: gg.b[:gg.kvStart+20], fail: srcCmds, want: "end of data"},
		{name: "gguf inside tensor infos", file: "m.gguf", data: gg.b[:gg.infoStart+10], fail: srcCmds, want: "end of data"},
		{name: "gguf at start of data", file: "m.gguf", data: gg.b[:gg.dataAt], fail: srcCmds, want: "past the end"},
		{name: "gguf inside data", file: "m.gguf", data: gg.b[:len(gg.b)-5], fail: srcCmds, want: "past the end"},
		// versions and counts
		{name: "gguf version 1", file: "m.gguf", data: with32(gg.b, 4, 1), fail: srcCmds, want: "version 1"},
		{name: "gguf version 99", file: "m.gguf", data: with32(gg.b, 4, 99), fail: srcCmds, want: "version 99"},
		{name: "gguf tensor count 2^60", file: "m.gguf", data: with64(gg.b, 8, 1<<60), fail: srcCmds, want: "tensor"},
		{name: "gguf kv count 2^60", file: "m.gguf", data: with64(gg.b, 16, 1<<60), fail: srcCmds, want: "gguf"},
		{name: "gguf key length lies", file: "m.gguf", data: with64(gg.b, gg.kvStart, 1<<40), fail: srcCmds, want: "gguf"},
		{name: "gguf unknown value type", file: "m.gguf", data: with32(gg.b, gg.kvStart+8+len("general.architecture"), 99), fail: srcCmds, want: "type"},
		{name: "gguf alignment not a power of two", file: "m.gguf",
			data: ggBuild(3, 3, 2, append(ggKVString("general.architecture", "llama"), ggKVU32("general.alignment", 3)...), ggTensors(), 32, ggData()).b,
			fail: srcCmds, want: "alignment"},
		// tensor infos
		{name: "gguf zero dimensions", file: "m.gguf", data: ggInfo(func(ts []ggTensor) []ggTensor { ts[0].ne = nil; return ts }), fail: srcCmds, want: "n_dims"},
		{name: "gguf overflowing shape", file: "m.gguf", data: ggInfo(func(ts []ggTensor) []ggTensor { ts[0].ne = []uint64{1 << 40, 1 << 40}; return ts }), fail: srcCmds, want: "a"},
		{name: "gguf unknown ggml type", file: "m.gguf", data: ggInfo(func(ts []ggTensor) []ggTensor { ts[1].typ = 99; return ts }), fail: srcCmds, want: "type"},
		{name: "gguf misaligned offset", file: "m.gguf", data: ggInfo(func(ts []ggTensor) []ggTensor { ts[1].off = 33; return ts }), fail: srcCmds, want: "alignment"},
		{name: "gguf offset past end", file: "m.gguf", data: ggInfo(func(ts []ggTensor) []ggTensor { ts[2].off = 1 << 40; return ts }), fail: srcCmds, want: "past the end"},
		{name: "gguf overlapping data", file: "m.gguf", data: ggInfo(func(ts []ggTensor) []ggTensor { ts[1].off = 0; return ts }), fail: srcCmds, want: "overlap"},
		{name: "gguf duplicate tensor", file: "m.gguf", data: ggInfo(func(ts []ggTensor) []ggTensor { ts[1].name = "a"; return ts }), fail: srcCmds, want: "duplicate"},
		{name: "gguf block type with partial block", file: "m.gguf", data: ggInfo(func(ts []ggTensor) []ggTensor { ts[2].ne = []uint64{31, 2}; return ts }), fail: srcCmds, want: "c"},
		{name: "gguf tensor count lies", file: "m.gguf", data: with64(gg.b, 8, 4), fail: srcCmds, want: "gguf"},

		// .tpk: truncations
		{name: "tpk inside header", file: "m.tpk", data: good[:10], fail: tpkCmds, want: "too short"},
		{name: "tpk inside a record", file: "m.tpk", data: good[:int(q.PayloadOffset)+5], fail: tpkCmds, want: "truncated"},
		{name: "tpk inside index", file: "m.tpk", data: good[:idxOff+idxLen/2], fail: tpkCmds, want: "truncated"},
		{name: "tpk inside footer", file: "m.tpk", data: good[:len(good)-3], fail: tpkCmds, want: "truncated"},
		// header and footer fields
		{name: "tpk bad magic", file: "m.tpk", data: flipBit(good, 1, 0x20), fail: []string{"inspect", "verify", "restore", "compress"}, want: "unknown file format|not a .tpk file: bad magic"},
		{name: "tpk version 2", file: "m.tpk", data: with32(good, 8, 2), fail: tpkCmds, want: "unsupported tpk version 2"},
		{name: "tpk header flags", file: "m.tpk", data: with32(good, 10, 1), fail: tpkCmds, want: "flags"},
		{name: "tpk footer index offset out of range", file: "m.tpk", data: with64(good, len(good)-16, 1<<50), fail: tpkCmds, want: "outside the file"},
		{name: "tpk footer index length lies", file: "m.tpk", data: with64(good, len(good)-8, uint64(idxLen+1)), fail: tpkCmds, want: "outside the file"},
		{name: "tpk index checksum", file: "m.tpk", data: flipBit(good, idxOff+idxLen/2, 0x01), fail: tpkCmds, want: "checksum mismatch in the index"},
		// index contents (footer checksum fixed)
		{name: "tpk index unknown field", file: "m.tpk", data: idxReplace(good, `"version":1`, `"version":1,"zip":true`), fail: tpkCmds, want: "unknown field"},
		{name: "tpk index version 2", file: "m.tpk", data: idxReplace(good, `"version":1`, `"version":2`), fail: tpkCmds, want: "version 2"},
		{name: "tpk overlapping records", file: "m.tpk", data: tpkWithIndexJSON(t, good, func(ix *tpk.Index) { ix.Tensors[2].RecordOffset = ix.Tensors[1].RecordOffset + 4 }), fail: tpkCmds, want: "overlaps"},
		{name: "tpk record past the index", file: "m.tpk", data: tpkWithIndexJSON(t, good, func(ix *tpk.Index) { ix.Tensors[3].RecordSize += 1 << 20 }), fail: tpkCmds, want: "out of range"},
		{name: "tpk overflowing shape", file: "m.tpk", data: tpkWithIndexJSON(t, good, func(ix *tpk.Index) { ix.Tensors[0].Shape = []int64{1 << 32, 1 << 32, 1 << 10} }), fail: tpkCmds, want: "embed_tokens"},
		{name: "tpk source size lies", file: "m.tpk", data: tpkWithIndexJSON(t, good, func(ix *tpk.Index) { ix.Tensors[3].SourceSize++ }), fail: tpkCmds, want: "source size"},
		{name: "tpk unknown dtype", file: "m.tpk", data: tpkWithIndexJSON(t, good, func(ix *tpk.Index) { ix.Tensors[3].DType = 77 }), fail: tpkCmds, want: "dtype"},
		{name: "tpk duplicate tensor", file: "m.tpk", data: tpkWithIndexJSON(t, good, func(ix *tpk.Index) { ix.Tensors[3].Name = ix.Tensors[0].Name }), fail: tpkCmds, want: "listed twice"},
		{name: "tpk source file out of range", file: "m.tpk", data: tpkWithIndexJSON(t, good, func(ix *tpk.Index) { ix.Tensors[3].SourceFile = 7 }), fail: tpkCmds, want: "source file 7"},
		{name: "tpk none payload shorter than the tensor", file: "m.tpk", data: tpkRebuild(t, good, func(ix *tpk.Index, ps [][]byte) {
			i := malFind(ix, "model.norm")
			ps[i] = ps[i][:len(ps[i])-4]
		}), fail: tpkCmds, want: "model.norm.weight"},
		{name: "tpk transposed vector", file: "m.tpk", data: tpkRebuild(t, tp["f16"], func(ix *tpk.Index, ps [][]byte) {
			i := malFind(ix, "model.norm")
			ix.Tensors[i].Transposed = true
			ix.Tensors[i].Codec, ix.Tensors[i].CodecID = "f16", codec.IDF16
			ps[i] = make([]byte, 64)
		}), fail: tpkCmds, want: "model.norm.weight"},
		// records: damage verify and restore find, inspect (index only) does not
		{name: "tpk record checksum", file: "m.tpk", data: flipBit(good, int(q.PayloadOffset)+3, 0x40), fail: recCmds, ok: []string{"inspect"}, want: "checksum mismatch"},
		{name: "tpk record magic", file: "m.tpk", data: flipBit(good, int(norm.RecordOffset), 0x01), fail: recCmds, ok: []string{"inspect"}, want: "model.norm.weight"},
		{name: "tpk record crc field", file: "m.tpk", data: flipBit(good, int(norm.RecordOffset+norm.RecordSize)-1, 0x80), fail: recCmds, ok: []string{"inspect"}, want: "checksum mismatch"},
		{name: "tpk record header disagrees with index", file: "m.tpk", data: tpkWithIndexJSON(t, good, func(ix *tpk.Index) { ix.Tensors[3].Params = "group=9" }), fail: recCmds, ok: []string{"inspect"}, want: "disagrees with the index"},
		// codecs: checksums valid, payload or parameters wrong
		{name: "tpk unknown codec", file: "m.tpk", data: codecRecord("int4", func(e *tpk.Entry, p []byte) []byte { e.Codec, e.CodecID = "zstd", 99; return p }), fail: recCmds, ok: []string{"inspect"}, want: "unknown codec"},
		{name: "tpk codec version too new", file: "m.tpk", data: codecRecord("int8", func(e *tpk.Entry, p []byte) []byte { e.CodecVersion = 9; return p }), fail: recCmds, ok: []string{"inspect"}, want: "version 9"},
		{name: "tpk int4 group size 0", file: "m.tpk", data: codecRecord("int4", func(e *tpk.Entry, p []byte) []byte { binary.LittleEndian.PutUint32(p[9:], 0); return p }), fail: []string{"restore"}, ok: []string{"inspect", "verify"}, want: "group size 0"},
		{name: "tpk int4 group size disagrees", file: "m.tpk", data: codecRecord("int4", func(e *tpk.Entry, p []byte) []byte { binary.LittleEndian.PutUint32(p[9:], 5); return p }), fail: []string{"restore"}, ok: []string{"inspect", "verify"}, want: "q_proj"},
		{name: "tpk int8 dims disagree", file: "m.tpk", data: codecRecord("int8", func(e *tpk.Entry, p []byte) []byte {
			binary.LittleEndian.PutUint32(p[1:], 32)
			binary.LittleEndian.PutUint32(p[5:], 16)
			return p
		}), fail: []string{"restore"}, ok: []string{"inspect", "verify"}, want: "16×32"},
		{name: "tpk int8 payload truncated", file: "m.tpk", data: codecRecord("int8", func(e *tpk.Entry, p []byte) []byte { return p[:len(p)-1] }), fail: []string{"restore"}, ok: []string{"inspect", "verify"}, want: "payload is"},
		{name: "tpk tenpak rank too large", file: "m.tpk", data: codecRecord("tenpak_x_v1", func(e *tpk.Entry, p []byte) []byte { binary.LittleEndian.PutUint16(p[9:], 17); return p }), fail: []string{"restore"}, ok: []string{"inspect", "verify"}, want: "rank 17"},
		{name: "tpk tenpak rank disagrees with length", file: "m.tpk", data: codecRecord("tenpak_x_v1", func(e *tpk.Entry, p []byte) []byte { binary.LittleEndian.PutUint16(p[9:], 3); return p }), fail: []string{"restore"}, ok: []string{"inspect", "verify"}, want: "header implies"},
		{name: "tpk tenpak group disagrees", file: "m.tpk", data: codecRecord("tenpak_x_v1", func(e *tpk.Entry, p []byte) []byte { binary.LittleEndian.PutUint32(p[11:], 3); return p }), fail: []string{"restore"}, ok: []string{"inspect", "verify"}, want: "q_proj"},
		{name: "tpk f16 payload length", file: "m.tpk", data: codecRecord("f16", func(e *tpk.Entry, p []byte) []byte { return p[:len(p)-2] }), fail: []string{"restore"}, ok: []string{"inspect", "verify"}, want: "q_proj"},
		// lying shapes: declared sizes far beyond the payload
		{name: "tpk f16 shape 2^36", file: "m.tpk", data: lie("f16", 1<<36), fail: []string{"restore"}, ok: []string{"inspect", "verify"}, want: "q_proj"},
		{name: "tpk int8 shape 2^16 x 2^16", file: "m.tpk", data: lie("int8", 1<<16, 1<<16), fail: []string{"restore"}, ok: []string{"inspect", "verify"}, want: "q_proj"},
		{name: "tpk tenpak shape 2^24 x 2^24", file: "m.tpk", data: lie("tenpak_x_v1", 1<<24, 1<<24), fail: []string{"restore"}, ok: []string{"inspect", "verify"}, want: "q_proj"},
		// source metadata the restore writer cannot use
		{name: "tpk gguf metadata garbage", file: "m.tpk", data: tpkWithIndexJSON(t, tp["gguf"], func(ix *tpk.Index) { ix.Source.GGUF.KV = []byte("garbage") }), fail: tpkCmds, want: "gguf"},
		{name: "tpk gguf info order unknown tensor", file: "m.tpk", data: tpkWithIndexJSON(t, tp["gguf"], func(ix *tpk.Index) { ix.GGUFInfoOrder = []string{"a", "b", "zz"} }), fail: tpkCmds, want: "zz"},
		{name: "tpk checkout record checksum", file: "m.tpk", data: flipBit(tp["ckpt"], tpkLastPayload(t, tp["ckpt"]), 0x04), fail: recCmds, ok: []string{"inspect"}, want: "checksum mismatch"},
		{name: "tpk checkout index file not json", file: "m.tpk", data: tpkWithIndexJSON(t, tp["ckpt"], func(ix *tpk.Index) { ix.Source.IndexJSON = []byte(`{"weight_map":`) }), fail: recCmds, ok: []string{"inspect"}, want: "index"},
		{name: "tpk safetensors metadata not json", file: "m.tpk", data: tpkWithIndexJSON(t, good, func(ix *tpk.Index) { ix.Source.Files[0].Metadata = []byte(`{"format":`) }), fail: recCmds, ok: []string{"inspect"}, want: "metadata"},
	}
}

// TestMalformedInputs feeds every malformed input to the commands that
// read it. Each must exit 1 with a one-line error that names the input
// file and the problem, write nothing (no output, no temporary file) and
// allocate less than malMemLimit.
//
// Memory is measured in-process as the growth of runtime.MemStats
// TotalAlloc over the command: the cumulative bytes allocated on the heap,
// an upper bound on the heap's peak growth. (The input is memory-mapped,
// not allocated, and is a few KiB.) An allocation sized by a lying header
// shows up in full even if its pages are never touched. The test runs its
// cases sequentially so other goroutines do not add to the count;
// TestMalformedPeakRSS checks the worst cases against the real binary's
// peak RSS.
func TestMalformedInputs(t *testing.T) {
	cases := malformedCases(t)
	if len(cases) < 40 {
		t.Fatalf("only %d malformed inputs", len(cases))
	}
	names := map[string]bool{}
	for _, c := range cases {
		if names[c.name] {
			t.Fatalf("case %q twice", c.name)
		}
		names[c.name] = true
		t.Run(c.name, func(t *testing.T) {
			for _, cmd := range c.fail {
				checkMalformed(t, c, cmd, true)
			}
			for _, cmd := range c.ok {
				checkMalformed(t, c, cmd, false)
			}
		})
	}
	t.Logf("%d malformed inputs", len(cases))
}

// setup writes c's input into a fresh directory and returns the directory
// and the input path.
func (c malformed) setup(t *testing.T) (string, string) {
	dir := t.TempDir()
	in := filepath.Join(dir, c.file)
	if c.dir != nil {
		if err := os.Mkdir(in, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range c.dir {
			if err := os.WriteFile(filepath.Join(in, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	} else if err := os.WriteFile(in, c.data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, in
}

func malArgs(cmd, in, dir string) []string {
	switch cmd {
	case "compress":
		return []string{"compress", in, "-o", filepath.Join(dir, "out.tpk")}
	case "restore":
		return []string{"restore", in, "-o", filepath.Join(dir, "restored")}
	}
	return []string{cmd, in}
}

func checkMalformed(t *testing.T, c malformed, cmd string, fail bool) {
	t.Helper()
	dir, in := c.setup(t)
	args := append(malArgs(cmd, in, dir), c.extra...)
	if cmd == "inspect" || cmd == "verify" {
		args = append(args[:2:2], c.extra...)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	code, stdout, stderr := runCLI(t, args...)
	runtime.ReadMemStats(&after)
	if d := after.TotalAlloc - before.TotalAlloc; d > malMemLimit {
		t.Errorf("%s: allocated %d MiB (limit %d MiB)", cmd, d>>20, malMemLimit>>20)
	}
	if !fail {
		if code != 0 {
			t.Errorf("%s: exit %d, want 0 (damage beyond what it reads): %s", cmd, code, stderr)
		}
		if cmd == "restore" {
			os.RemoveAll(filepath.Join(dir, "restored"))
		}
		onlyInputLeft(t, cmd, dir, c.file)
		return
	}
	msg := strings.TrimSuffix(stderr, "\n")
	t.Logf("%-8s exit %d, %d KiB allocated: %s", cmd, code, (after.TotalAlloc-before.TotalAlloc)>>10, msg)
	switch {
	case code != 1:
		t.Errorf("%s: exit %d, want 1; stderr %q", cmd, code, stderr)
	case strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "tpconvert: "):
		t.Errorf("%s: error is not one line: %q", cmd, stderr)
	case strings.Contains(msg, "panic") || strings.Contains(msg, "goroutine "):
		t.Errorf("%s: %q", cmd, stderr)
	case !strings.Contains(msg, c.file):
		t.Errorf("%s: error does not name the file %s: %q", cmd, c.file, msg)
	case !errMentions(msg, c.want):
		t.Errorf("%s: error does not mention %q: %q", cmd, c.want, msg)
	}
	if stdout != "" {
		t.Errorf("%s: printed %q on stdout", cmd, stdout)
	}
	onlyInputLeft(t, cmd, dir, c.file)
}

// errMentions reports whether msg contains one of the |-separated
// alternatives of want, ignoring case.
func errMentions(msg, want string) bool {
	for _, w := range strings.Split(want, "|") {
		if strings.Contains(strings.ToLower(msg), strings.ToLower(w)) {
			return true
		}
	}
	return false
}

// onlyInputLeft checks that dir holds nothing but the input.
func onlyInputLeft(t *testing.T, cmd, dir, input string) {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		if e.Name() != input {
			t.Errorf("%s left %s behind", cmd, e.Name())
		}
	}
}

// TestMalformedPeakRSS runs the built binary on the inputs whose headers
// claim the most memory (a safetensors header length of 2^63, GGUF counts
// of 2^60, .tpk shapes of 2^36 to 2^48 elements) and checks the peak
// resident set size of the process (see runMeasured), which covers the
// heap, stacks and the mapped input.
func TestMalformedPeakRSS(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	bin := buildTpconvert(t)
	want := map[string]bool{
		"st header length 2^63": true, "gguf tensor count 2^60": true, "gguf kv count 2^60": true,
		"gguf key length lies": true, "tpk f16 shape 2^36": true, "tpk int8 shape 2^16 x 2^16": true,
		"tpk tenpak shape 2^24 x 2^24": true, "tpk overflowing shape": true, "tpk footer index offset out of range": true,
	}
	n := 0
	for _, c := range malformedCases(t) {
		if !want[c.name] {
			continue
		}
		n++
		for _, cmd := range c.fail {
			dir, in := c.setup(t)
			code, stderr, rss := runMeasured(t, bin, malArgs(cmd, in, dir)...)
			msg := strings.TrimSpace(stderr)
			if code != 1 || !errMentions(msg, c.want) {
				t.Errorf("%s %s: exit %d, want 1 with an error mentioning %q: %s", c.name, cmd, code, c.want, msg)
			}
			if rss > malMemLimit {
				t.Errorf("%s %s: peak RSS %d MiB (limit %d MiB)", c.name, cmd, rss>>20, malMemLimit>>20)
			} else {
				t.Logf("%-40s %-8s peak RSS %3d MiB: %s", c.name, cmd, rss>>20, msg)
			}
		}
	}
	if n != len(want) {
		t.Fatalf("found %d of the %d cases", n, len(want))
	}
}

// buildTpconvert builds tpconvert into a temporary directory.
func buildTpconvert(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tpconvert")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// runMeasured runs bin with args and returns its exit status, its
// standard error and its peak resident set size in bytes.
//
// The peak comes from GNU time's %M when /usr/bin/time exists. Otherwise it
// is the child's getrusage ru_maxrss, an upper bound only: os/exec starts
// the child with vfork semantics (CLONE_VM), and the kernel folds the
// address space the child shared with this test process into ru_maxrss at
// exec, so the figure is at least the test process's own peak.
func runMeasured(t *testing.T, bin string, args ...string) (code int, stderr string, rss int64) {
	t.Helper()
	timeOut := filepath.Join(t.TempDir(), "time")
	var cmd *exec.Cmd
	_, err := os.Stat("/usr/bin/time")
	useTime := err == nil
	if useTime {
		cmd = exec.Command("/usr/bin/time", append([]string{"-f", "%M", "-o", timeOut, bin}, args...)...)
	} else {
		cmd = exec.Command(bin, args...)
	}
	var eb bytes.Buffer
	cmd.Stderr = &eb
	err = cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%s: %v", bin, err)
	}
	code = cmd.ProcessState.ExitCode()
	if !useTime {
		return code, eb.String(), cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss << 10
	}
	b, err := os.ReadFile(timeOut)
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b)) // "Command exited with non-zero status 1\n1234\n"
	kib, err := strconv.ParseInt(f[len(f)-1], 10, 64)
	if err != nil {
		t.Fatalf("/usr/bin/time wrote %q", b)
	}
	return code, eb.String(), kib << 10
}

// TestVerifyBoundedMemory verifies a .tpk holding one 256 MiB record: the
// peak RSS must stay far below the record's size (the payload is hashed
// in chunks whose pages are released as it goes).
func TestVerifyBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("writes a 256 MiB file; skipped with -short")
	}
	bin := buildTpconvert(t)
	dir := t.TempDir()
	const n = 64 << 20 // F32 elements
	hdr := fmt.Sprintf(`{"w":{"dtype":"F32","shape":[%d],"data_offsets":[0,%d]}}`, n, 4*n)
	in := filepath.Join(dir, "big.safetensors")
	if err := os.WriteFile(in, stFile(hdr, nil), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(in, int64(8+len(hdr)+4*n)); err != nil { // zeros, sparse
		t.Fatal(err)
	}
	out := filepath.Join(dir, "big.tpk")
	if code, stderr, _ := runMeasured(t, bin, in, "--codec", "none", "-o", out); code != 0 {
		t.Fatalf("compress: exit %d: %s", code, stderr)
	}
	os.Remove(in)
	code, stderr, rss := runMeasured(t, bin, "verify", out)
	if code != 0 {
		t.Fatalf("verify: exit %d: %s", code, stderr)
	}
	t.Logf("verify of a %d MiB record: peak RSS %d MiB", 4*n>>20, rss>>20)
	if rss > 64<<20 {
		t.Errorf("verify of a %d MiB record: peak RSS %d MiB, want under 64 MiB", 4*n>>20, rss>>20)
	}
}
