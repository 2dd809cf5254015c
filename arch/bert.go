package arch

// BERT and its encoders in Hugging Face transformers: attention.self.query,
// attention.output.dense, intermediate.dense and layer.N.output.dense (not
// attention.output.dense, which is attention).
func init() {
	Register(Family{
		Name: "bert",
		MLP:  []string{`intermediate\.dense`, `[0-9]+\.output\.dense`},
		Attn: []string{`attention\.self\.(query|key|value)`, `attention\.output\.dense`},
	})
}
