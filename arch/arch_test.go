package arch

import "testing"

func TestClass(t *testing.T) {
	for name, want := range map[string]string{
		"model.layers.0.mlp.gate_proj.weight":                 "mlp",
		"model.layers.11.mlp.down_proj.weight":                "mlp",
		"blk.3.ffn_down.weight":                               "mlp",
		"transformer.h.0.mlp.c_fc.weight":                     "mlp",
		"encoder.layer.0.intermediate.dense.weight":           "mlp",
		"encoder.layer.0.output.dense.weight":                 "mlp",
		"model.layers.0.self_attn.q_proj.weight":              "attn",
		"blk.0.attn_output.weight":                            "attn",
		"blk.0.attn_k.weight":                                 "attn",
		"transformer.h.0.attn.c_attn.weight":                  "attn",
		"encoder.layer.0.attention.self.query.weight":         "attn",
		"encoder.layer.0.attention.output.dense.weight":       "attn",
		"model.layers.0.self_attn.q_proj.bias":                "",
		"model.embed_tokens.weight":                           "",
		"lm_head.weight":                                      "",
		"output.weight":                                       "",
		"token_embd.weight":                                   "",
		"model.layers.0.input_layernorm.weight":               "",
		"blk.0.attn_norm.weight":                              "",
		"encoder.layer.0.attention.output.LayerNorm.weight":   "",
		"embeddings.word_embeddings.weight":                   "",
		"model.layers.0.post_attention_layernorm.weight":      "",
		"transformer.h.0.ln_1.weight":                         "",
		"model.layers.0.self_attn.rotary_emb.inv_freq":        "",
		"model.layers.0.mlp.down_proj.weight_scale_inv":       "",
		"encoder.layer.0.attention.output.dense.weight.extra": "",
		"transformer.h.10.mlp.c_proj.weight":                  "mlp",
		"gpt_neox.layers.0.attention.query_key_value.weight":  "attn",
		"gpt_neox.layers.0.mlp.dense_h_to_4h.weight":          "mlp",
		"model.layers.0.block_sparse_moe.experts.0.w1.weight": "",
		"model.layers.0.feed_forward.w1.weight":               "mlp",
		"model.layers.0.attention.wq.weight":                  "attn",
	} {
		if got := Class(name); got != want {
			t.Errorf("Class(%q) = %q, want %q", name, got, want)
		}
	}
	if !IsConv1D("transformer.h.0.attn.c_attn.weight") || IsConv1D("model.layers.0.mlp.up_proj.weight") {
		t.Error("IsConv1D misclassifies")
	}
}

// TestRoles checks the role tables the importance model reads: llama.cpp's
// names, then Hugging Face Llama's, each naming tensors Class knows.
func TestRoles(t *testing.T) {
	ls, hs := Layers(), Heads()
	if len(ls) != 2 || ls[0].Q != "attn_q.weight" || ls[1].Down != "mlp.down_proj.weight" {
		t.Fatalf("Layers() = %+v", ls)
	}
	for _, r := range ls {
		for _, n := range []string{r.Q, r.K, r.V, r.O} {
			if Class("blk.0."+n) != Attn {
				t.Errorf("%s is not attention", n)
			}
		}
		for _, n := range []string{r.Gate, r.Up, r.Down} {
			if Class("blk.0."+n) != MLP {
				t.Errorf("%s is not MLP", n)
			}
		}
	}
	if len(hs) != 2 || hs[0].Output != "output.weight" || hs[1].Embedding != "model.embed_tokens.weight" {
		t.Errorf("Heads() = %+v", hs)
	}
}
