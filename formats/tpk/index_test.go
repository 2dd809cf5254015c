package tpk

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"runtime"
	"testing"

	"github.com/tpconvert/tpconvert/tensor"
)

// closeIndex writes n records with names and params that JSON escapes, closes
// the writer, and returns the index bytes it wrote, the index json.Marshal
// makes of the same entries, and the bytes allocated by Close.
func closeIndex(t *testing.T, n int) (got, want []byte, alloc uint64) {
	t.Helper()
	var buf bytes.Buffer
	buf.Grow(n*400 + 1<<16) // so that only Close's own allocations are counted
	w, err := NewWriter(&buf, testMeta())
	if err != nil {
		t.Fatal(err)
	}
	w.Grow(n)
	for i := range n {
		e := Entry{Name: fmt.Sprintf("blk.%d.<a&b>\u00e9\u2028", i), DType: tensor.F32, Shape: []int64{1}, Codec: "none",
			CodecVersion: 1, SourceSize: 4, Params: `{"x":"<y>"}`}
		if i%3 == 1 {
			e.Stats = &Stats{RelErr: 0.25, SQNRdB: 12}
			e.Transposed = true
		}
		if err := w.WriteRecord(e, []byte{1, 2, 3, 4}); err != nil {
			t.Fatal(err)
		}
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&m1)
	idx := w.idx
	if idx.Tensors == nil {
		idx.Tensors = []Entry{}
	}
	if want, err = json.Marshal(&idx); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	f := b[len(b)-FooterSize:]
	off, size := binary.LittleEndian.Uint64(f[16:]), binary.LittleEndian.Uint64(f[24:])
	got = b[off : off+size]
	if c := binary.LittleEndian.Uint32(f[12:]); c != crc32.Checksum(got, castagnoli) {
		t.Errorf("footer CRC %08x does not match the index", c)
	}
	if int(off+size) != len(b)-FooterSize {
		t.Errorf("index ends at %d, footer at %d", off+size, len(b)-FooterSize)
	}
	return got, want, m1.TotalAlloc - m0.TotalAlloc
}

// The streamed index is byte for byte what json.Marshal makes of it.
func TestIndexSameAsMarshal(t *testing.T) {
	for _, n := range []int{0, 1, 4} {
		got, want, _ := closeIndex(t, n)
		if !bytes.Equal(got, want) {
			t.Errorf("%d entries: index\n%s\nwant\n%s", n, got, want)
		}
	}
}

// Writing the index allocates far less than the index: it is not built in
// memory as one buffer (which, marshalled and copied, allocated 3.7 times
// the index). Under the race detector json's pooled buffers are not
// reused, so the bound there is twice the index: still below any scheme
// that holds the whole index.
func TestIndexStreamed(t *testing.T) {
	got, _, alloc := closeIndex(t, 20000)
	limit := uint64(len(got)) / 4
	if raceBuild {
		limit = 2 * uint64(len(got))
	}
	if alloc > limit {
		t.Errorf("Close allocated %d bytes for an index of %d bytes (limit %d)", alloc, len(got), limit)
	}
}

// decodeIndex decodes what a json.Decoder disallowing unknown fields
// decodes, and refuses what it refuses.
func TestDecodeIndexAsDecoder(t *testing.T) {
	_, valid, _ := closeIndex(t, 3)
	cases := []string{
		string(valid),
		`{"version":1,"source":{"kind":"gguf"},"tensors":null}`,
		`{"Version":1,"TENSORS":[{"name":"a","shape":[2]}],"created_by":"x"}`,
		`{"tensors":[],"version":2}  `,
		`{"version":1,"tensors":[{"name":"a","bogus":1}]}`,
		`{"version":1,"bogus":true,"tensors":[]}`,
		`{"version":"1","tensors":[]}`,
		`{"version":1,"tensors":{}}`,
		`{"version":1,"tensors":[{"name":"a"},]}`,
		`{"version":1,"tensors":[{"name":"a"}`,
		`[]`,
		`{}`,
		`{"tensors":[{"name":"a","stats":{"rel_err":0.5}}]}`,
	}
	for _, c := range cases {
		var want Index
		dec := json.NewDecoder(bytes.NewReader([]byte(c)))
		dec.DisallowUnknownFields()
		werr := dec.Decode(&want)
		var got Index
		end, gerr := decodeIndex([]byte(c), &got)
		if (werr == nil) != (gerr == nil) {
			t.Errorf("%s: error %v, want %v", c, gerr, werr)
			continue
		}
		if werr != nil {
			continue
		}
		gj, _ := json.Marshal(&got)
		wj, _ := json.Marshal(&want)
		if !bytes.Equal(gj, wj) || end != dec.InputOffset() {
			t.Errorf("%s: decoded %s (end %d), want %s (end %d)", c, gj, end, wj, dec.InputOffset())
		}
	}
}
