package safetensors

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	st "github.com/nlpodyssey/safetensors"

	"github.com/tpconvert/tpconvert/tensor"
)

func TestParseDType(t *testing.T) {
	tests := []struct {
		name  string
		want  tensor.DType
		bytes int64 // per element
	}{
		{"F64", tensor.F64, 8},
		{"F32", tensor.F32, 4},
		{"F16", tensor.F16, 2},
		{"BF16", tensor.BF16, 2},
		{"I8", tensor.I8, 1},
		{"I16", tensor.I16, 2},
		{"I32", tensor.I32, 4},
		{"I64", tensor.I64, 8},
		{"U8", tensor.U8, 1},
		{"U16", tensor.U16, 2},
		{"U32", tensor.U32, 4},
		{"U64", tensor.U64, 8},
		{"BOOL", tensor.Bool, 1},
		{"F8_E4M3", tensor.F8E4M3, 1},
		{"F8_E5M2", tensor.F8E5M2, 1},
		{"F8_E8M0", tensor.F8E8M0, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := ParseDType(tc.name)
			if err != nil || d != tc.want {
				t.Fatalf("ParseDType(%q) = %v, %v; want %v", tc.name, d, err, tc.want)
			}
			name, ok := DTypeName(d)
			if !ok || name != tc.name {
				t.Errorf("DTypeName(%v) = %q, %v", d, name, ok)
			}
			if n, _ := tensor.ByteSize(d, []int64{3}); n != 3*tc.bytes {
				t.Errorf("ByteSize(%v, [3]) = %d, want %d", d, n, 3*tc.bytes)
			}
		})
	}
	for _, bad := range []string{"", "f32", "F4", "F8_E4M3FNUZ", "Q4_K", "float32", "MXFP4"} {
		if d, err := ParseDType(bad); !errors.Is(err, tensor.ErrUnknownDType) {
			t.Errorf("ParseDType(%q) = %v, %v; want ErrUnknownDType", bad, d, err)
		}
	}
	if _, ok := DTypeName(tensor.Q4_K); ok {
		t.Error("DTypeName(Q4_K) is storable")
	}
}

// TestUpstreamDTypes checks the mapping against every dtype of the upstream
// library: same name, same element size.
func TestUpstreamDTypes(t *testing.T) {
	for u := st.BOOL; u <= st.U64; u++ {
		d, err := ParseDType(u.String())
		if err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		if n, _ := tensor.ByteSize(d, []int64{1}); uint64(n) != u.Size() {
			t.Errorf("%s: %d bytes, upstream %d", u, n, u.Size())
		}
	}
}

func TestAppendString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"model.layers.0.weight", `"model.layers.0.weight"`},
		{`a"b\c`, `"a\"b\\c"`},
		{"tab\tnl\ncr\rbs\bff\f", `"tab\tnl\ncr\rbs\bff\f"`},
		{"\x00\x01\x1f\x7f", `"\u0000\u0001\u001f` + "\x7f\""},
		{"<&> é \u2028 😀", "\"<&> é \u2028 😀\""}, // serde_json escapes none of these
	}
	for _, tc := range tests {
		got := string(appendString(nil, tc.in))
		if got != tc.want {
			t.Errorf("appendString(%q) = %s, want %s", tc.in, got, tc.want)
		}
		var back string
		if err := json.Unmarshal([]byte(got), &back); err != nil || back != tc.in {
			t.Errorf("%s decodes to %q, %v", got, back, err)
		}
	}
}

func TestParseHeaderKeepsOrderAndMetadata(t *testing.T) {
	hdr := `{"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}, "__metadata__" : { "format" : "pt" },"a":{"shape":[1],"dtype":"I32","data_offsets":[0,4]}}`
	h, err := parseHeader([]byte(hdr))
	if err != nil {
		t.Fatal(err)
	}
	if len(h.tensors) != 2 || h.tensors[0].name != "b" || h.tensors[1].name != "a" {
		t.Fatalf("tensors %+v, want b then a", h.tensors)
	}
	if h.metaPos != 1 {
		t.Errorf("metaPos = %d, want 1", h.metaPos)
	}
	if want := `{ "format" : "pt" }`; string(h.metadata) != want {
		t.Errorf("metadata = %q, want %q", h.metadata, want)
	}
	if h.tensors[1].dtype != tensor.I32 || h.tensors[0].begin != 4 || h.tensors[0].end != 8 {
		t.Errorf("entries %+v", h.tensors)
	}
}

func TestSetTotalSize(t *testing.T) {
	tests := []struct{ in, want string }{
		{"{\n  \"metadata\": {\n    \"total_size\": 123\n  },\n  \"weight_map\": {}\n}\n",
			"{\n  \"metadata\": {\n    \"total_size\": 4096\n  },\n  \"weight_map\": {}\n}\n"},
		{`{"weight_map":{"a":"x"},"metadata":{"format":"pt","total_size":7,"x":[1]}}`,
			`{"weight_map":{"a":"x"},"metadata":{"format":"pt","total_size":4096,"x":[1]}}`},
		{`{"metadata":{"total_size":"7"}}`, `{"metadata":{"total_size":"7"}}`}, // not a number: kept
		{`{"weight_map":{}}`, `{"weight_map":{}}`},
	}
	for _, tc := range tests {
		if got, _ := SetTotalSize([]byte(tc.in), 4096); string(got) != tc.want {
			t.Errorf("SetTotalSize(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestBuildIndex(t *testing.T) {
	got := buildIndex(96, map[string]string{
		"lm_head.weight": "model-00002-of-00002.safetensors",
		"b\u00e9":        "model-00001-of-00002.safetensors",
		"a":              "model-00001-of-00002.safetensors",
	})
	// As Python's json.dumps(index, indent=2, sort_keys=True) + "\n".
	want := `{
  "metadata": {
    "total_size": 96
  },
  "weight_map": {
    "a": "model-00001-of-00002.safetensors",
    "b\u00e9": "model-00001-of-00002.safetensors",
    "lm_head.weight": "model-00002-of-00002.safetensors"
  }
}
`
	if string(got) != want {
		t.Errorf("buildIndex =\n%s\nwant\n%s", got, want)
	}
	if !bytes.Contains(appendPyString(nil, "😀"), []byte(`\ud83d\ude00`)) {
		t.Error("astral characters are not written as surrogate pairs")
	}
}
