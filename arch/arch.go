// Package arch holds what tpconvert knows about model architectures: which
// tensors are attention and MLP projection matrices (the layer classes
// that --layers selects), which are stored transposed (GPT-2's Conv1D),
// and the names of each layer's roles (norms, projections, output head)
// that rate control's data-free importance model reads. Each family of
// architectures is one file that registers a Family; adding an
// architecture touches only its file.
package arch

import (
	"regexp"
	"strings"
	"sync"
)

// Family describes the tensor names of one family of architectures, in
// Hugging Face transformers' and llama.cpp's (GGUF) conventions. Names are
// regular expressions matched against the part of a tensor name before
// ".weight", after a dot or at its start.
type Family struct {
	// Name names the family in docs and tests.
	Name string
	// MLPProj and AttnProj are projection names within a block; Blocks
	// are the names of the attention blocks. A tensor is an attention
	// matrix when its name ends in BLOCK.PROJ.weight for any registered
	// block and attention projection, and an MLP matrix when it ends in
	// mlp.PROJ.weight for any registered MLP projection.
	MLPProj, AttnProj, Blocks []string
	// MLP and Attn are further whole patterns of each class
	// ("ffn_(gate|up|down)").
	MLP, Attn []string
	// Conv1D are the patterns of weights stored as [in, out], the
	// transpose of a Linear weight.
	Conv1D []string
	// Layers are the role names within one layer (after its "blk.N." or
	// "model.layers.N." prefix), for the importance model.
	Layers []Roles
	// Heads are the final norm, output head and token embedding names.
	Heads []Head
}

// Roles names the tensors of one decoder layer that the importance model
// reads: the two norms and the seven projections of a Llama-style layer.
type Roles struct {
	AttnNorm, FFNNorm string
	Q, K, V, O        string
	Gate, Up, Down    string
}

// Head names the final norm, the output head and the token embedding
// (the head when the two are tied).
type Head struct {
	Norm, Output, Embedding string
}

var (
	mu       sync.Mutex
	families []Family
	compiled *matchers
)

type matchers struct {
	mlp, attn, conv1d *regexp.Regexp
}

// Register adds a family. It is called from the init functions of this
// package's files.
func Register(f Family) {
	mu.Lock()
	defer mu.Unlock()
	families = append(families, f)
	compiled = nil
}

func get() *matchers {
	mu.Lock()
	defer mu.Unlock()
	if compiled != nil {
		return compiled
	}
	var mlpProj, attnProj, blocks, mlp, attn, conv []string
	for _, f := range families {
		mlpProj = append(mlpProj, f.MLPProj...)
		attnProj = append(attnProj, f.AttnProj...)
		blocks = append(blocks, f.Blocks...)
		mlp = append(mlp, f.MLP...)
		attn = append(attn, f.Attn...)
		conv = append(conv, f.Conv1D...)
	}
	alt := func(xs []string) string { return "(" + strings.Join(xs, "|") + ")" }
	if len(mlpProj) > 0 {
		mlp = append([]string{`mlp\.` + alt(mlpProj)}, mlp...)
	}
	if len(blocks) > 0 && len(attnProj) > 0 {
		attn = append([]string{alt(blocks) + `\.` + alt(attnProj)}, attn...)
	}
	re := func(xs []string) *regexp.Regexp {
		if len(xs) == 0 {
			return regexp.MustCompile(`$.^`) // matches nothing
		}
		return regexp.MustCompile(`(^|\.)` + alt(xs) + `\.weight$`)
	}
	compiled = &matchers{mlp: re(mlp), attn: re(attn), conv1d: re(conv)}
	return compiled
}

// The layer classes.
const (
	MLP  = "mlp"
	Attn = "attn"
)

// Class returns MLP, Attn or "" for a tensor name. Only names ending in
// "weight" have a class.
func Class(name string) string {
	m := get()
	switch {
	case m.mlp.MatchString(name):
		return MLP
	case m.attn.MatchString(name):
		return Attn
	}
	return ""
}

// IsConv1D reports whether name is a Conv1D weight, stored as
// [in_features, out_features] (the transpose of a Linear weight).
func IsConv1D(name string) bool { return get().conv1d.MatchString(name) }

// Layers returns the role names of every registered family.
func Layers() []Roles { return collect(func(f Family) []Roles { return f.Layers }) }

// Heads returns the head names of every registered family.
func Heads() []Head { return collect(func(f Family) []Head { return f.Heads }) }

// collect concatenates a field of every family, in registration order.
func collect[T any](field func(Family) []T) []T {
	mu.Lock()
	defer mu.Unlock()
	var out []T
	for _, f := range families {
		out = append(out, field(f)...)
	}
	return out
}
