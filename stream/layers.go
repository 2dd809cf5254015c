package stream

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/tpconvert/tpconvert/tensor"
)

// Layers selects which weight matrices a conversion compresses.
type Layers string

// The layer selections.
const (
	LayersAll  Layers = "all"  // attention and MLP projection matrices
	LayersMLP  Layers = "mlp"  // MLP projections only
	LayersAttn Layers = "attn" // attention projections only
	LayersNone Layers = "none" // nothing (only --include selects)
	// LayersWeights is every 2-D weight matrix: the projections, token
	// embeddings, the output head and any other matrix.
	LayersWeights Layers = "weights"
)

// ParseLayers parses a --layers value.
func ParseLayers(s string) (Layers, error) {
	switch l := Layers(s); l {
	case LayersAll, LayersMLP, LayersAttn, LayersNone, LayersWeights:
		return l, nil
	}
	return "", fmt.Errorf("unknown --layers %q (want mlp, attn, all, weights or none)", s)
}

// Projection-matrix names in the conventions of Hugging Face transformers
// (Llama, Mistral, Qwen, Gemma, Phi, GPT-2, GPT-NeoX, Falcon, BERT) and of
// GGUF (llama.cpp's tensor names). Only names ending in "weight" count.
var (
	mlpRE = regexp.MustCompile(`(^|\.)(` + strings.Join([]string{
		`mlp\.(gate_proj|up_proj|down_proj|gate_up_proj|c_fc|c_proj|fc1|fc2|fc_in|fc_out|dense_h_to_4h|dense_4h_to_h|w1|w2|w3)`,
		`feed_forward\.(w1|w2|w3)`,
		`ffn_(gate|up|down|gate_up)`,
		`intermediate\.dense`,
		`[0-9]+\.output\.dense`, // BERT: layer.N.output.dense (not attention.output.dense)
	}, "|") + `)\.weight$`)
	attnRE = regexp.MustCompile(`(^|\.)(` + strings.Join([]string{
		`(self_attn|attention|attn)\.(q_proj|k_proj|v_proj|o_proj|qkv_proj|c_attn|c_proj|query_key_value|dense|out_proj|wq|wk|wv|wo)`,
		`attention\.self\.(query|key|value)`,
		`attention\.output\.dense`,
		`attn_(q|k|v|qkv|output)`,
	}, "|") + `)\.weight$`)
	// GPT-2 stores its Conv1D weights as [in, out].
	conv1dRE = regexp.MustCompile(`(^|\.)h\.[0-9]+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$`)
)

// Class returns "mlp", "attn" or "" for a tensor name.
func Class(name string) string {
	switch {
	case mlpRE.MatchString(name):
		return "mlp"
	case attnRE.MatchString(name):
		return "attn"
	}
	return ""
}

// IsConv1D reports whether name is a GPT-2 Conv1D weight, stored as
// [in_features, out_features] (the transpose of a Linear weight).
func IsConv1D(name string) bool { return conv1dRE.MatchString(name) }

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
	switch Class(t.Name) {
	case "mlp":
		return s.Layers == LayersAll || s.Layers == LayersMLP
	case "attn":
		return s.Layers == LayersAll || s.Layers == LayersAttn
	}
	return false
}
