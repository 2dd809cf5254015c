package arch

// llama.cpp's tensor names in GGUF files (gguf-py/gguf/constants.py,
// MODEL_TENSORS), shared by every architecture it converts.
func init() {
	Register(Family{
		Name: "gguf",
		MLP:  []string{`ffn_(gate|up|down|gate_up)`},
		Attn: []string{`attn_(q|k|v|qkv|output)`},
		Layers: []Roles{{AttnNorm: "attn_norm.weight", FFNNorm: "ffn_norm.weight",
			Q: "attn_q.weight", K: "attn_k.weight", V: "attn_v.weight", O: "attn_output.weight",
			Gate: "ffn_gate.weight", Up: "ffn_up.weight", Down: "ffn_down.weight"}},
		Heads: []Head{{Norm: "output_norm.weight", Output: "output.weight", Embedding: "token_embd.weight"}},
	})
}
