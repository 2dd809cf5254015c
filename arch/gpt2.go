package arch

// GPT-2 in Hugging Face transformers: attn.c_attn, attn.c_proj, mlp.c_fc
// and mlp.c_proj are Conv1D layers, whose weights are stored as [in, out].
func init() {
	Register(Family{
		Name:     "gpt2",
		MLPProj:  []string{"c_fc", "c_proj"},
		AttnProj: []string{"c_attn", "c_proj"},
		Blocks:   []string{"attn"},
		Conv1D:   []string{`h\.[0-9]+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)`},
	})
}
