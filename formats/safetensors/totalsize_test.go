package safetensors

import (
	"bytes"
	"encoding/json"
	"strconv"
	"testing"
)

func TestReplaceTotalSize(t *testing.T) {
	for _, c := range []struct {
		name, in, want string
		ok             bool
	}{
		{"transformers", "{\n  \"metadata\": {\n    \"total_size\": 1000\n  },\n  \"weight_map\": {\n    \"a\": \"x.safetensors\"\n  }\n}\n",
			"{\n  \"metadata\": {\n    \"total_size\": 42\n  },\n  \"weight_map\": {\n    \"a\": \"x.safetensors\"\n  }\n}\n", true},
		{"compact, metadata last", `{"weight_map":{"total_size":"x"},"metadata":{"format":"pt","total_size":7}}`,
			`{"weight_map":{"total_size":"x"},"metadata":{"format":"pt","total_size":42}}`, true},
		{"nested decoy", `{"metadata":{"nested":{"total_size":5},"total_size":6.0e3}}`, `{"metadata":{"nested":{"total_size":5},"total_size":42}}`, true},
		{"array decoy", `{"metadata":{"list":[{"total_size":1}, "total_size", 3],"total_size":9}}`, `{"metadata":{"list":[{"total_size":1}, "total_size", 3],"total_size":42}}`, true},
		{"top-level total_size only", `{"total_size":9,"weight_map":{}}`, `{"total_size":9,"weight_map":{}}`, false},
		{"string total_size", `{"metadata":{"total_size":"9"}}`, `{"metadata":{"total_size":"9"}}`, false},
		{"no metadata", `{"weight_map":{"a":"b"}}`, `{"weight_map":{"a":"b"}}`, false},
		{"not JSON", `{"metadata":{"total_size":`, `{"metadata":{"total_size":`, false},
		{"array", `[1,2]`, `[1,2]`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, ok := SetTotalSize([]byte(c.in), 42)
			if ok != c.ok || string(got) != c.want {
				t.Errorf("got %q, %v; want %q, %v", got, ok, c.want, c.ok)
			}
		})
	}
}

func FuzzReplaceTotalSize(f *testing.F) {
	f.Add([]byte(`{"metadata":{"total_size":1000},"weight_map":{"a":"b"}}`), int64(5))
	f.Add([]byte(`{"metadata":{"x":[{"total_size":1}],"total_size":-0.5e2}}`), int64(1<<40))
	f.Add([]byte(`{"metadata":{"total_size":1`), int64(0))
	f.Fuzz(func(t *testing.T, in []byte, total int64) {
		out, ok := SetTotalSize(in, total)
		if !ok {
			if !bytes.Equal(out, in) {
				t.Fatal("changed the index without reporting it")
			}
			return
		}
		if !json.Valid(in) || hasDuplicateKeys(in) {
			return
		}
		var top map[string]json.RawMessage
		var meta map[string]json.RawMessage
		if json.Unmarshal(out, &top) != nil || json.Unmarshal(top["metadata"], &meta) != nil {
			t.Fatalf("valid index became invalid: %q", out)
		}
		if got := string(meta["total_size"]); got != strconv.FormatInt(total, 10) {
			t.Fatalf("total_size is %s, want %d", got, total)
		}
	})
}

// hasDuplicateKeys is a coarse check for inputs where encoding/json keeps
// a later duplicate key than the one replaced (escaped keys count too).
func hasDuplicateKeys(b []byte) bool {
	return bytes.Count(b, []byte(`"total_size"`)) > 1 || bytes.Count(b, []byte(`"metadata"`)) > 1 || bytes.Contains(b, []byte(`\u`))
}
