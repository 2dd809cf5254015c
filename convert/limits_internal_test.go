package convert

import (
	"strings"
	"testing"

	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/formats/tpk"
	"github.com/tpconvert/tpconvert/tensor"
)

// countSource is a Source of n tensors without data, for limit checks.
type countSource struct{ n int }

func (s countSource) Tensors() []tensor.Info {
	ts := make([]tensor.Info, s.n)
	for i := range ts {
		ts[i] = tensor.Info{Name: "t", DType: tensor.F32, Shape: []int64{0}}
	}
	return ts
}
func (countSource) Bytes(int) ([]byte, error) { return nil, nil }
func (countSource) Release(int)               {}
func (countSource) Meta() *formats.Meta {
	return &formats.Meta{Kind: formats.Safetensors, Files: []formats.FileMeta{{Name: "m.safetensors"}}}
}
func (countSource) Close() error { return nil }

// TestTensorCountCheckedFirst checks that a source with more tensors than
// a .tpk holds is refused before any work (it used to be refused by the
// writer after every tensor had been read).
func TestTensorCountCheckedFirst(t *testing.T) {
	err := checkStorable("m.safetensors", countSource{tpk.MaxTensors + 1})
	if err == nil || !strings.Contains(err.Error(), "more than a .tpk file holds") {
		t.Errorf("%d tensors: %v", tpk.MaxTensors+1, err)
	}
	if err := checkStorable("m.safetensors", countSource{3}); err != nil {
		t.Errorf("3 tensors: %v", err)
	}
}
