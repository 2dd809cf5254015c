package stream

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/tpconvert/tpconvert/arch"
	"github.com/tpconvert/tpconvert/tensor"
)

// Layers selects which weight matrices a conversion compresses.
type Layers string

// The layer selections.
const (
	LayersAll  Layers = "all"  // attention and MLP projection matrices
	LayersMLP  Layers = "mlp"  // MLP projections only
	LayersAttn Layers = "attn" // attention projections only
	LayersNone Layers = "none" // nothing (only Selector.Include selects)
	// LayersWeights is every 2-D weight matrix: the projections, token
	// embeddings, the output head and any other matrix.
	LayersWeights Layers = "weights"
)

// ErrLayers is matched (with errors.Is) by the error of ParseLayers.
var ErrLayers = errors.New("unknown layer selection")

// ParseLayers parses the name of a layer selection.
func ParseLayers(s string) (Layers, error) {
	switch l := Layers(s); l {
	case LayersAll, LayersMLP, LayersAttn, LayersNone, LayersWeights:
		return l, nil
	}
	return "", fmt.Errorf("%w %q (want mlp, attn, all, weights or none)", ErrLayers, s)
}

// Selector decides which tensors are compressed.
type Selector struct {
	Layers  Layers
	Include *regexp.Regexp // also compress tensors whose name matches
	Exclude *regexp.Regexp // never compress tensors whose name matches
}

// Select reports whether t is compressed. Only tensors whose dtype can be
// decoded to float32 are candidates; projection matrices must be 2-D.
func (s Selector) Select(t tensor.Info) bool {
	if !tensor.CanDecode(t.DType) || t.Elems() == 0 {
		return false
	}
	if s.Exclude != nil && s.Exclude.MatchString(t.Name) {
		return false
	}
	if s.Include != nil && s.Include.MatchString(t.Name) {
		return true
	}
	if len(t.Shape) != 2 {
		return false
	}
	if s.Layers == LayersWeights {
		return strings.HasSuffix(t.Name, "weight") && t.Shape[0] > 1 && t.Shape[1] > 1
	}
	switch arch.Class(t.Name) {
	case arch.MLP:
		return s.Layers == LayersAll || s.Layers == LayersMLP
	case arch.Attn:
		return s.Layers == LayersAll || s.Layers == LayersAttn
	}
	return false
}
