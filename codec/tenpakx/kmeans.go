package tenpakx

import (
	"math"
	"math/rand/v2"
	"slices"

	"github.com/tpconvert/tpconvert/codec/internal/par"
)

// vec is one 4-element vector of the residual, or its per-element weights.
type vec = [VectorDim]float32

// dist returns the weighted squared distance Σ w_k (a_k − b_k)². The
// explicit conversions keep every architecture from fusing the products
// into multiply-adds, so that encoders on all platforms agree.
func dist(a, b, w *vec) float32 {
	d0, d1, d2, d3 := a[0]-b[0], a[1]-b[1], a[2]-b[2], a[3]-b[3]
	return float32(float32(float32(w[0]*d0)*d0)+float32(float32(w[1]*d1)*d1)) +
		float32(float32(float32(w[2]*d2)*d2)+float32(float32(w[3]*d3)*d3))
}

// nearestBrute returns the index of the codebook entry nearest to e under
// weights w; ties go to the lowest index. It is the reference for kdTree.
func nearestBrute(cb []vec, e, w *vec) int {
	best, bi := float32(math.Inf(1)), 0
	for i := range cb {
		if d := dist(e, &cb[i], w); d < best {
			best, bi = d, i
		}
	}
	return bi
}

// kdTree finds exact nearest codebook entries under any non-negative diagonal
// weighting: its cells are axis-aligned, so a weighted distance to a
// splitting plane is a lower bound on the distance to every point beyond
// it. Searches do not allocate.
type kdTree struct {
	cb    []vec    // codebook entries in index order
	pts   []vec    // codebook entries in tree order
	ids   []uint16 // their codebook indices
	nodes []kdNode
}

type kdNode struct {
	dim   int8 // split dimension, or −1 for a leaf
	split float32
	// child holds the children (points ≤ split, points ≥ split), or for
	// a leaf the range [child[0], child[1]) of pts.
	child [2]int32
}

const kdLeaf = 12

func newKDTree(cb []vec) *kdTree {
	t := &kdTree{cb: cb, pts: slices.Clone(cb), ids: make([]uint16, len(cb))}
	for i := range t.ids {
		t.ids[i] = uint16(i)
	}
	t.build(0, len(cb))
	return t
}

func (t *kdTree) build(lo, hi int) int32 {
	id := int32(len(t.nodes))
	t.nodes = append(t.nodes, kdNode{dim: -1, child: [2]int32{int32(lo), int32(hi)}})
	if hi-lo <= kdLeaf {
		return id
	}
	dim, spread := 0, float32(-1)
	for k := range VectorDim {
		a, b := t.pts[lo][k], t.pts[lo][k]
		for _, p := range t.pts[lo+1 : hi] {
			a, b = min(a, p[k]), max(b, p[k])
		}
		if b-a > spread {
			dim, spread = k, b-a
		}
	}
	if spread <= 0 {
		return id // all points equal: one leaf
	}
	// Sort by the split coordinate (ties by index, for determinism).
	type item struct {
		p  vec
		id uint16
	}
	items := make([]item, hi-lo)
	for i := range items {
		items[i] = item{t.pts[lo+i], t.ids[lo+i]}
	}
	slices.SortFunc(items, func(a, b item) int {
		if a.p[dim] != b.p[dim] {
			if a.p[dim] < b.p[dim] {
				return -1
			}
			return 1
		}
		return int(a.id) - int(b.id)
	})
	for i, it := range items {
		t.pts[lo+i], t.ids[lo+i] = it.p, it.id
	}
	mid := (lo + hi) / 2
	split := t.pts[mid][dim]
	l := t.build(lo, mid)
	r := t.build(mid, hi)
	t.nodes[id] = kdNode{dim: int8(dim), split: split, child: [2]int32{l, r}}
	return id
}

// kdSlack widens the pruning test so that float32 rounding of the bounds
// can never discard a point the brute-force search would choose.
const kdSlack = 1 + 1e-5

// kdStack is the scratch space of a search: pending cells, nearest first
// on top. Each goroutine owns one, so that searches neither allocate nor
// clear memory.
type kdStack [2 * 64]kdPending

type kdPending struct {
	node int32
	rd   float32 // lower bound on the distance to the cell
	off  vec     // offsets of the query from the cell, per dimension
}

// nearest returns the index of the entry nearest to e under weights w, the
// same as nearestBrute. A guess ≥ 0 (a likely answer, such as the previous
// assignment) only speeds up the search. The search is the
// incremental-distance search of Arya and Mount: a cell's bound adds up the
// weighted squared offsets of the query from the cell along each split
// dimension crossed.
func (t *kdTree) nearest(e, w *vec, guess int, stack *kdStack) int {
	// Candidates are compared by the key distance<<32 | index: for
	// non-negative floats the bit patterns order like the values, so the
	// smallest key is the nearest entry with the lowest index, and the
	// comparison needs no branch.
	best := uint64(math.Float32bits(float32(math.Inf(1))))<<32 | math.MaxUint32
	if guess >= 0 {
		best = uint64(math.Float32bits(dist(e, &t.cb[guess], w)))<<32 | uint64(guess)
	}
	nodes, pts, ids := t.nodes, t.pts, t.ids
	stack[0].node, stack[0].rd, stack[0].off = 0, 0, vec{}
	sp := 1
	for sp > 0 {
		sp--
		top := &stack[sp]
		n, rd, off := top.node, top.rd, top.off
		limit := math.Float32frombits(uint32(best>>32)) * kdSlack
		if rd > limit {
			continue
		}
		for {
			nd := &nodes[n]
			if nd.dim < 0 {
				break
			}
			k := nd.dim & (VectorDim - 1)
			diff := e[k] - nd.split
			// The near child is the one on the query's side of the split:
			// chosen by the sign bit of diff, without a branch.
			neg := math.Float32bits(diff) >> 31
			near, far := nd.child[neg^1], nd.child[neg]
			old := off[k]
			rd2 := rd - float32(float32(w[k]*old)*old) + float32(float32(w[k]*diff)*diff)
			if rd2 <= limit && sp < len(stack) {
				p := &stack[sp]
				p.node, p.rd, p.off = far, rd2, off
				p.off[k] = diff
				sp++
			}
			n = near
		}
		nd := &nodes[n]
		for i := nd.child[0]; i < nd.child[1]; i++ {
			// dist(e, &pts[i], w), written out: the call is not inlined.
			p := &pts[i]
			d0, d1, d2, d3 := e[0]-p[0], e[1]-p[1], e[2]-p[2], e[3]-p[3]
			d := float32(float32(float32(w[0]*d0)*d0)+float32(float32(w[1]*d1)*d1)) +
				float32(float32(float32(w[2]*d2)*d2)+float32(float32(w[3]*d3)*d3))
			best = min(best, uint64(math.Float32bits(d))<<32|uint64(ids[i]))
		}
	}
	return int(uint32(best))
}

// kmeans learns a codebook of CodebookSize entries for the vectors x
// (weights w, one per element) by weighted k-means: k-means++ seeding, then
// at most KMeansIterations Lloyd iterations that stop early when no
// assignment changes. An empty cluster is re-seeded with the vector
// farthest from its centroid (lowest index on ties). The result depends
// only on x, w and rng, not on workers.
func kmeans(x, w []vec, rng *rand.Rand, workers int) []vec {
	const k = CodebookSize
	cb := make([]vec, k)
	if len(x) <= k {
		copy(cb, x) // every vector is its own entry; the rest stay zero
		return cb
	}
	seed(cb, x, w, rng, workers)

	assign := make([]uint8, len(x))
	dists := make([]float32, len(x))
	const chunk = 4096
	changed := make([]int, (len(x)+chunk-1)/chunk)
	var sumW, sumWX [k]vec64
	var count [k]int
	for it := range KMeansIterations {
		tree := newKDTree(cb)
		par.For(len(x), chunk, chunk, workers, func(lo, hi int) error {
			var stack kdStack
			n := 0
			for i := lo; i < hi; i++ {
				guess := -1
				if it > 0 {
					guess = int(assign[i])
				}
				j := tree.nearest(&x[i], &w[i], guess, &stack)
				if it == 0 || int(assign[i]) != j {
					n++
				}
				assign[i] = uint8(j)
				dists[i] = dist(&x[i], &cb[j], &w[i])
			}
			changed[lo/chunk] = n
			return nil
		})
		moved := 0
		for _, n := range changed {
			moved += n
		}
		if it > 0 && moved == 0 {
			break
		}
		sumW, sumWX, count = [k]vec64{}, [k]vec64{}, [k]int{}
		for i := range x {
			a := assign[i]
			count[a]++
			for d := range VectorDim {
				wd := float64(w[i][d])
				sumW[a][d] += wd
				sumWX[a][d] += wd * float64(x[i][d])
			}
		}
		for c := range cb {
			if count[c] == 0 {
				// Re-seed with the farthest vector.
				far := 0
				for i, d := range dists {
					if d > dists[far] {
						far = i
					}
				}
				cb[c] = x[far]
				dists[far] = 0
				continue
			}
			for d := range VectorDim {
				if sumW[c][d] > 0 {
					cb[c][d] = float32(sumWX[c][d] / sumW[c][d])
				}
			}
		}
	}
	return cb
}

type vec64 = [VectorDim]float64

// seed chooses the initial codebook by k-means++: the first entry is a
// uniformly chosen vector, each next one a vector chosen with probability
// proportional to its weighted squared distance to the nearest entry so
// far (uniformly if all distances are zero). Partial sums are formed over
// fixed chunks, so the choice does not depend on workers.
func seed(cb []vec, x, w []vec, rng *rand.Rand, workers int) {
	const chunk = 4096
	d := make([]float32, len(x))
	for i := range d {
		d[i] = float32(math.Inf(1))
	}
	sums := make([]float64, (len(x)+chunk-1)/chunk)
	update := func(c int) {
		par.For(len(x), chunk, chunk, workers, func(lo, hi int) error {
			var s float64
			for i := lo; i < hi; i++ {
				if v := dist(&x[i], &cb[c], &w[i]); v < d[i] {
					d[i] = v
				}
				s += float64(d[i])
			}
			sums[lo/chunk] = s
			return nil
		})
	}
	cb[0] = x[rng.IntN(len(x))]
	update(0)
	for c := 1; c < len(cb); c++ {
		var total float64
		for _, s := range sums {
			total += s
		}
		pick := -1
		if total > 0 {
			pick = sample(d, sums, chunk, rng.Float64()*total)
		}
		if pick < 0 {
			pick = rng.IntN(len(x))
		}
		cb[c] = x[pick]
		update(c)
	}
}

// sample returns the index i at which the running sum of d first exceeds
// u, using the chunk sums to skip whole chunks; -1 if d is all zero.
func sample(d []float32, sums []float64, chunk int, u float64) int {
	last := -1
	for ch, s := range sums {
		if s <= 0 {
			continue
		}
		last = ch
		if u >= s {
			u -= s
			continue
		}
		lo, hi := ch*chunk, min((ch+1)*chunk, len(d))
		for i := lo; i < hi; i++ {
			if u -= float64(d[i]); u < 0 {
				return i
			}
		}
		break // rounding: fall back to the chunk's last positive entry
	}
	if last < 0 {
		return -1
	}
	for i := min((last+1)*chunk, len(d)) - 1; i >= last*chunk; i-- {
		if d[i] > 0 {
			return i
		}
	}
	return -1
}
