package gguf

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestParseKV(t *testing.T) {
	raw, want := handKV()
	got, err := ParseKV(raw, uint64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprintf("%#v", got) != fmt.Sprintf("%#v", want) {
		t.Errorf("ParseKV:\n got %#v\nwant %#v", got, want)
	}
	// Too few keys leaves bytes over; too many runs out of bytes.
	if _, err := ParseKV(raw, uint64(len(want)-1)); !errors.Is(err, ErrFormat) {
		t.Errorf("count-1: %v, want ErrFormat", err)
	}
	if _, err := ParseKV(raw, uint64(len(want)+1)); !errors.Is(err, ErrTruncated) {
		t.Errorf("count+1: %v, want ErrTruncated", err)
	}
	if m, err := ParseKV(nil, 0); err != nil || len(m) != 0 {
		t.Errorf("empty section: %v, %v", m, err)
	}
}

// TestEncodeKV checks that EncodeKV reproduces the hand-built section byte
// for byte.
func TestEncodeKV(t *testing.T) {
	raw, m := handKV()
	got, err := EncodeKV(m)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, raw) {
		t.Fatalf("EncodeKV differs from the hand-built section at byte %d", firstDiff(got, raw))
	}
}

func TestEncodeKVErrors(t *testing.T) {
	deep := Array{TypeUint8, []uint8{1}}
	for i := 0; i < MaxDepth; i++ {
		deep = Array{TypeArray, []Array{deep}}
	}
	tests := []struct {
		name string
		kvs  []KV
		msg  string
	}{
		{"wrong Go type", []KV{{"k", TypeUint32, 5}}, "Go type int"},
		{"wrong array slice", []KV{{"k", TypeArray, Array{TypeUint32, []int32{1}}}}, "[]int32"},
		{"array not Array", []KV{{"k", TypeArray, []uint32{1}}}, "Go type []uint32"},
		{"unknown type", []KV{{"k", 13, uint8(1)}}, "unknown value type 13"},
		{"unknown element type", []KV{{"k", TypeArray, Array{Elem: 42}}}, "unknown array element type 42"},
		{"duplicate", []KV{{"k", TypeBool, true}, {"k", TypeBool, false}}, "duplicate key"},
		{"long key", []KV{{strings.Repeat("k", MaxKeyLen+1), TypeBool, true}}, "key of"},
		{"too deep", []KV{{"k", TypeArray, deep}}, "nested"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := EncodeKV(tc.kvs)
			if err == nil || !strings.Contains(err.Error(), tc.msg) || !strings.HasPrefix(err.Error(), "gguf: ") {
				t.Errorf("got %v, want an error containing %q", err, tc.msg)
			}
		})
	}
	// One level less is fine, and decodes to the same structure.
	ok := deep.Values.([]Array)[0]
	b, err := EncodeKV([]KV{{"k", TypeArray, ok}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseKV(b, 1)
	if err != nil || fmt.Sprintf("%#v", m[0].Value) != fmt.Sprintf("%#v", ok) {
		t.Errorf("depth %d round trip: %v %#v", MaxDepth, err, m)
	}
}

// TestParseKVBool checks that any non-zero bool byte decodes as true.
func TestParseKVBool(t *testing.T) {
	raw := (&enc{}).key("b", TypeBool).u8(2).b
	m, err := ParseKV(raw, 1)
	if err != nil || m[0].Value != true {
		t.Errorf("got %v, %v", m, err)
	}
}
