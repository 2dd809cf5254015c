package rate

import (
	"math"
	"regexp"

	"github.com/tpconvert/tpconvert/arch"
	"github.com/tpconvert/tpconvert/formats"
	"github.com/tpconvert/tpconvert/tensor"
)

// The data-free sensitivity model.
//
// The error a weight matrix W adds to its layer's output for an input x
// is ‖ΔW·x‖², whose expectation is Σ_c E[x_c²]·‖ΔW[:,c]‖² when the input
// channels are uncorrelated. E[x_c²] (what llama.cpp's importance matrix
// measures on data) is estimated here from the weights alone, for the
// Llama family of architectures (GGUF and Hugging Face names):
//
//   - attention q/k/v and MLP gate/up read RMSNorm(h)·g: E[x_c²] = g_c²,
//     g the norm's weight (the hidden state is normalized to unit RMS);
//   - the output head (or a tied token embedding) reads the final norm
//     likewise;
//   - attention output reads a mix of value vectors; each channel gets
//     the mean value power, mean_j Σ_c W_v[j,c]²·g_c²;
//   - MLP down reads silu(a)·b with a = W_gate·x, b = W_up·x; with a, b
//     taken as independent Gaussians of variances σ_a², σ_b² from the same
//     rule, E[x_j²] = E[silu(a)²]·σ_b², the first factor by quadrature.
//
// Tensors the model does not recognise get E[x_c²] = 1 (plain squared
// error). The resulting per-column weights shape both which grid each
// tensor gets and how its groups clip.

var (
	reLayer = regexp.MustCompile(`^(.*?)(\d+)\.(.*)$`)
)

// role names within one layer, for GGUF and Hugging Face Llama naming.
type roles struct {
	attnNorm, ffnNorm string
	q, k, v, o        string
	gate, up, down    string
}

// layerRoles and heads are the names package arch knows.
var layerRoles = func() []roles {
	var out []roles
	for _, r := range arch.Layers() {
		out = append(out, roles{attnNorm: r.AttnNorm, ffnNorm: r.FFNNorm, q: r.Q, k: r.K, v: r.V, o: r.O, gate: r.Gate, up: r.Up, down: r.Down})
	}
	return out
}()

// heads: (final norm, output head, token embedding) name triples.
var heads = func() [][3]string {
	var out [][3]string
	for _, h := range arch.Heads() {
		out = append(out, [3]string{h.Norm, h.Output, h.Embedding})
	}
	return out
}()

// loader decodes whole tensors by name, to float32.
type loader struct {
	src   formats.Source
	infos []tensor.Info // src.Tensors(), taken once
	index map[string]int
}

func (l *loader) has(name string) bool { _, ok := l.index[name]; return ok }

func (l *loader) load(name string) ([]float32, tensor.Info, bool) {
	i, ok := l.index[name]
	if !ok {
		return nil, tensor.Info{}, false
	}
	t := l.infos[i]
	if !tensor.CanDecode(t.DType) {
		return nil, t, false
	}
	b, err := l.src.Bytes(i)
	if err != nil {
		return nil, t, false
	}
	x := make([]float32, t.Elems())
	err = tensor.ToFloat32(x, t.DType, b)
	l.src.Release(i)
	if err != nil {
		return nil, t, false
	}
	for _, v := range x {
		if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
			return nil, t, false
		}
	}
	return x, t, true
}

// Importance returns the estimated input power per column, E[x_c²], of
// every weight matrix of src the model recognises (see the package
// comment of this file). The vectors have one entry per column.
func Importance(src formats.Source) map[string][]float32 {
	l := &loader{src: src, infos: src.Tensors(), index: map[string]int{}}
	for i, t := range l.infos {
		l.index[t.Name] = i
	}
	out := map[string][]float32{}
	// Layers: collect prefixes like "blk.3." or "model.layers.3.".
	seen := map[string]bool{}
	for _, t := range l.infos {
		m := reLayer.FindStringSubmatch(t.Name)
		if m == nil {
			continue
		}
		prefix := m[1] + m[2] + "."
		if seen[prefix] {
			continue
		}
		seen[prefix] = true
		for _, r := range layerRoles {
			layerImportance(l, prefix, r, out)
		}
	}
	for _, h := range heads {
		g, gt, ok := l.load(h[0])
		if !ok || len(gt.Shape) != 1 {
			continue
		}
		imp := squares(g)
		head := h[1]
		if !l.has(head) {
			// Tied embedding: the embedding is also the head, and its
			// error counts in both roles (Weights): as the head, each
			// column by its input power; as the embedding, every column
			// alike. The two relative errors are averaged by weighting
			// column c by (1 + g_c²/mean g²)/2.
			head = h[2]
			imp = tiedImportance(imp)
		}
		if cols(l, head) == len(imp) {
			out[head] = imp
		}
	}
	return out
}

// tiedImportance returns the column weights of a tied embedding whose
// head importance is imp: (1 + imp_c/mean(imp))/2, so that the weighted
// error is the mean of the embedding's (plain) and the head's relative
// error. imp all zero gives all 1.
func tiedImportance(imp []float32) []float32 {
	var mean float64
	for _, v := range imp {
		mean += float64(v)
	}
	mean /= float64(max(len(imp), 1))
	out := make([]float32, len(imp))
	for c, v := range imp {
		w := 1.0
		if mean > 0 {
			w = (1 + float64(v)/mean) / 2
		}
		out[c] = float32(w)
	}
	return out
}

func cols(l *loader, name string) int {
	i, ok := l.index[name]
	if !ok {
		return -1
	}
	t := l.infos[i]
	if len(t.Shape) != 2 {
		return -1
	}
	return int(t.Shape[1])
}

func squares(g []float32) []float32 {
	out := make([]float32, len(g))
	for i, v := range g {
		out[i] = v * v
	}
	return out
}

// rowPower returns, per row j of the named matrix W (rows × len(imp)
// columns), Σ_c W[j,c]²·imp[c]. It decodes one row at a time, so its
// memory is one row whatever the size of W; ok is false if the tensor is
// missing, not such a matrix, or holds non-finite values.
func (l *loader) rowPower(name string, imp []float32) (out []float64, ok bool) {
	i, found := l.index[name]
	if !found || cols(l, name) != len(imp) {
		return nil, false
	}
	t := l.infos[i]
	if !tensor.CanDecode(t.DType) {
		return nil, false
	}
	b, err := l.src.Bytes(i)
	if err != nil {
		return nil, false
	}
	defer l.src.Release(i)
	rows, n := int(t.Shape[0]), len(imp)
	if rows <= 0 || len(b)%rows != 0 {
		return nil, false
	}
	rb := len(b) / rows
	row := make([]float32, n)
	out = make([]float64, rows)
	for j := range out {
		if tensor.ToFloat32(row, t.DType, b[j*rb:(j+1)*rb]) != nil {
			return nil, false
		}
		var s float64
		for c, v := range row {
			s += float64(v) * float64(v) * float64(imp[c])
		}
		if math.IsNaN(s) || math.IsInf(s, 0) {
			return nil, false
		}
		out[j] = s
	}
	return out, true
}

func layerImportance(l *loader, p string, r roles, out map[string][]float32) {
	if g, t, ok := l.load(p + r.attnNorm); ok && len(t.Shape) == 1 {
		imp := squares(g)
		for _, name := range []string{r.q, r.k, r.v} {
			if cols(l, p+name) == len(imp) {
				out[p+name] = imp
			}
		}
		if pw, ok := l.rowPower(p+r.v, imp); ok {
			var mean float64
			for _, x := range pw {
				mean += x
			}
			mean /= float64(len(pw))
			if n := cols(l, p+r.o); n > 0 {
				o := make([]float32, n)
				for i := range o {
					o[i] = float32(mean)
				}
				out[p+r.o] = o
			}
		}
	}
	if g, t, ok := l.load(p + r.ffnNorm); ok && len(t.Shape) == 1 {
		imp := squares(g)
		for _, name := range []string{r.gate, r.up} {
			if cols(l, p+name) == len(imp) {
				out[p+name] = imp
			}
		}
		sa, ok1 := l.rowPower(p+r.gate, imp)
		sb, ok2 := l.rowPower(p+r.up, imp)
		if ok1 && ok2 && len(sa) == len(sb) {
			if cols(l, p+r.down) == len(sa) {
				d := make([]float32, len(sa))
				for j := range d {
					d[j] = float32(siluSquare(math.Sqrt(sa[j])) * sb[j])
				}
				out[p+r.down] = d
			}
		}
	}
}

// siluSquare returns E[silu(a)²] for a ~ N(0, σ²), by the midpoint rule
// on [−8σ, 8σ].
func siluSquare(sigma float64) float64 {
	const n = 400
	var s float64
	h := 16.0 / n
	for i := 0; i < n; i++ {
		z := -8 + (float64(i)+0.5)*h
		a := sigma * z
		si := a / (1 + math.Exp(-a))
		s += si * si * math.Exp(-z*z/2)
	}
	return s * h / math.Sqrt(2*math.Pi)
}

// Weights returns the objective's weight of tensors that do not count 1:
// the token embedding and the output head count as much as one tensor
// per transformer layer (L, the number of layers found); a token
// embedding that is also the output head (no head tensor: tied) counts
// in both roles, 2L. Their relative
// error perturbs every position's input, or the logits themselves,
// directly, where a projection's error is one of many added to the
// residual stream. This is a prior, not a measurement: like llama.cpp's
// k-quant mixes, which give the output head more bits, it keeps the
// largest tensors from being starved by a per-tensor objective.
func Weights(src formats.Source) map[string]float64 {
	layers := map[string]bool{}
	names := map[string]bool{}
	for _, t := range src.Tensors() {
		names[t.Name] = true
		if m := reLayer.FindStringSubmatch(t.Name); m != nil {
			layers[m[1]+m[2]] = true
		}
	}
	out := map[string]float64{}
	if len(layers) == 0 {
		return out
	}
	for _, h := range heads {
		for _, n := range h[1:] {
			if names[n] {
				out[n] = float64(len(layers))
			}
		}
		if names[h[2]] && !names[h[1]] {
			// A tied embedding is the head too: it counts in both roles.
			out[h[2]] = 2 * float64(len(layers))
		}
	}
	return out
}
