package arch

// Phi-2 and Phi-3 in Hugging Face transformers: fused gate_up_proj and
// qkv_proj (Phi-3), fc1/fc2 and dense (Phi-2).
func init() {
	Register(Family{
		Name:     "phi",
		MLPProj:  []string{"gate_up_proj", "fc1", "fc2"},
		AttnProj: []string{"qkv_proj", "dense"},
	})
}
