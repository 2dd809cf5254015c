package arch

// Llama and the architectures named like it in Hugging Face transformers
// (Mistral, Mixtral's attention, Qwen2, Gemma), and Meta's original
// checkpoints (feed_forward.w1, attention.wq).
func init() {
	Register(Family{
		Name:     "llama",
		MLPProj:  []string{"gate_proj", "up_proj", "down_proj", "w1", "w2", "w3"},
		AttnProj: []string{"q_proj", "k_proj", "v_proj", "o_proj", "wq", "wk", "wv", "wo"},
		Blocks:   []string{"self_attn"},
		MLP:      []string{`feed_forward\.(w1|w2|w3)`},
		Layers: []Roles{{AttnNorm: "input_layernorm.weight", FFNNorm: "post_attention_layernorm.weight",
			Q: "self_attn.q_proj.weight", K: "self_attn.k_proj.weight", V: "self_attn.v_proj.weight", O: "self_attn.o_proj.weight",
			Gate: "mlp.gate_proj.weight", Up: "mlp.up_proj.weight", Down: "mlp.down_proj.weight"}},
		Heads: []Head{{Norm: "model.norm.weight", Output: "lm_head.weight", Embedding: "model.embed_tokens.weight"}},
	})
}
