package arch

// GPT-NeoX (attention.query_key_value, mlp.dense_h_to_4h), Falcon
// (self_attention is not matched; its MLP is), GPT-J (attn.out_proj,
// mlp.fc_in, mlp.fc_out) in Hugging Face transformers.
func init() {
	Register(Family{
		Name:     "gptneox",
		MLPProj:  []string{"dense_h_to_4h", "dense_4h_to_h", "fc_in", "fc_out"},
		AttnProj: []string{"query_key_value", "out_proj"},
		Blocks:   []string{"attention"},
	})
}
