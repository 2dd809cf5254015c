// Package tenpakx implements the tenpak_x_v1 codec (TenPak-X): an
// importance-weighted low-rank approximation, a weighted vector-quantized
// correction and an INT4 residual,
//
//	W ≈ L·R + C[idx] + Q4(W − L·R − C[idx])
//
// It registers itself with package codec on import. The payload is
// specified in formats/tpk/CODECS.md.
//
// A tensor is viewed as a matrix (tensor.Info.Matrix) whose rows are output
// features and whose columns are input features, the layout of a Hugging
// Face Linear weight and of GGUF after formats/gguf reverses its
// dimensions. Importance is measured per input column; a tensor stored
// [in, out] (GPT-2 Conv1D) is transposed by the caller before Encode.
//
// Encoding, for a rows×cols matrix W:
//
//  1. importance[c] = mean_r |W[r,c]|, mapped linearly onto [0.5, 2.0]
//     (all equal: 1.0). No calibration data is used.
//  2. W_s = W·diag(sqrt(importance)); a rank-r truncated SVD W_s ≈ U·S·Vᵀ
//     is found by a randomized range finder (Gaussian sketch of r+8
//     columns, one power iteration with QR re-orthonormalisation, then an
//     exact SVD of the small projected matrix; never a full SVD of W). L = U·S (rows×r) and
//     R = Vᵀ·diag(1/sqrt(importance)) (r×cols) are stored in FP16.
//  3. E = W − L̂·R̂ with the FP16-rounded factors, cut into vectors of 4
//     consecutive weights of a row (the last vector of a row is padded with
//     zeros that carry no weight), is vector-quantized with a 256-entry FP16
//     codebook learned by importance-weighted k-means (distance
//     Σ_k w_k (e_k − c_k)², w_k the importance of e_k's column).
//  4. E2 = E − C[idx] is quantized to INT4 per group (one row by default)
//     with an FP16 scale and offset.
//
// Decoding computes W' = L·R + C[idx] + (q·scale + offset).
//
// Every random choice comes from a PCG generator seeded with
// codec.Options.Seed; the payload depends only on the input and the options,
// not on the number of goroutines.
package tenpakx

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/rand/v2"

	"github.com/tpconvert/tpconvert/codec"
	"github.com/tpconvert/tpconvert/codec/internal/par"
	"github.com/tpconvert/tpconvert/codec/internal/q4"
	"github.com/tpconvert/tpconvert/tensor"
	"gonum.org/v1/gonum/blas/blas32"
)

// Format constants of tenpak_x_v1.
const (
	// Version is the codec's payload version (record version and the
	// first header byte).
	Version = 1
	// HeaderSize is the size of the payload header in bytes.
	HeaderSize = 15
	// DefaultRank is the rank of the low-rank factors when
	// Options.Rank is 0.
	DefaultRank = 32
	// MaxRank is the largest rank the header can hold.
	MaxRank = math.MaxUint16
	// CodebookSize is the number of codebook entries (one index byte).
	CodebookSize = 256
	// VectorDim is the number of consecutive weights of a row that one
	// codebook entry replaces.
	VectorDim = 4
)

// Encoder parameters. They are not recorded in the payload: decoding does
// not depend on them.
const (
	// Oversampling is the number of extra sketch columns of the
	// randomized range finder.
	Oversampling = 8
	// PowerIterations is the number of subspace iterations of the range
	// finder. Each costs two passes over the matrix. On realistic
	// synthetic 1024×2816 weights (numtest.Realistic) the relative rank-32
	// residual ‖W − L·R‖/‖W‖ is 0.935 with none, 0.857 with one, 0.849
	// with two and 0.847 with three, and the SQNR of the whole codec moves
	// by less than 0.3 dB between one and three.
	PowerIterations = 1
	// MaxTrainVectors bounds the k-means training sample (64 vectors per
	// centroid). On the SmolLM2-135M matrices (576×576 to 1536×576) going
	// from 65536 vectors and 12 iterations to 16384 and 10 made encoding
	// 2.85× faster and cost 0.1–0.4 dB of SQNR per matrix.
	MaxTrainVectors = 16384
	// KMeansIterations bounds the Lloyd iterations.
	KMeansIterations = 10
)

// PCG stream selectors: the generators are seeded (Options.Seed, stream).
const (
	streamSketch = 0x74706b785f736b // "tpkx_sk"
	streamKMeans = 0x74706b785f6b6d // "tpkx_km"
)

func init() {
	codec.Register(codec.IDTenpakXV1, "tenpak_x_v1",
		"TenPak-X: importance-weighted rank-32 factors + 4-D VQ + INT4 residual (~6.3 bits/weight)", New)
}

// Codec is the tenpak_x_v1 codec.
type Codec struct {
	rank    int    // requested rank (clamped per tensor)
	group   int    // INT4 group size; 0 = one row
	seed    uint64 // seed of every random choice
	workers int    // goroutines per tensor; 0 = GOMAXPROCS
}

// New returns a tenpak_x_v1 codec configured by o:
//
//   - Rank: rank of the factors, default 32, at most 65535; clamped to
//     min(rows, cols) for each tensor.
//   - GroupSize: weights per INT4 residual group, default 0 = one whole
//     row, at most 2^32−1; groups never straddle rows and the last group of
//     a row may be shorter.
//   - Seed: seed of the sketch and of k-means, default 0.
//   - Workers: goroutines per tensor, default GOMAXPROCS.
func New(o codec.Options) (codec.Codec, error) {
	if err := o.Only("tenpak_x_v1", codec.TakesRank|codec.TakesGroupSize); err != nil {
		return nil, err
	}
	if o.Rank < 0 || o.Rank > MaxRank {
		return nil, fmt.Errorf("tenpak_x_v1: rank %d out of range [1, %d]", o.Rank, MaxRank)
	}
	if o.GroupSize < 0 || o.GroupSize > math.MaxUint32 {
		return nil, fmt.Errorf("tenpak_x_v1: group size %d out of range [1, %d]", o.GroupSize, uint32(math.MaxUint32))
	}
	c := &Codec{rank: o.Rank, group: o.GroupSize, seed: o.Seed, workers: o.Workers}
	if c.rank == 0 {
		c.rank = DefaultRank
	}
	return c, nil
}

// ID returns codec.IDTenpakXV1.
func (*Codec) ID() uint16 { return codec.IDTenpakXV1 }

// Name returns "tenpak_x_v1".
func (*Codec) Name() string { return "tenpak_x_v1" }

// Version returns the payload version, Version.
func (*Codec) Version() uint16 { return Version }

// Params returns the encoding parameters, e.g. "rank=32 group=row seed=0".
func (c *Codec) Params() string {
	g := "row"
	if c.group > 0 {
		g = fmt.Sprint(c.group)
	}
	return fmt.Sprintf("rank=%d group=%s seed=%d", c.rank, g, c.seed)
}

func (c *Codec) nworkers() int { return codec.Options{Workers: c.workers}.PerTensor() }

// shape returns the effective rank and header group size for a rows×cols
// matrix: the rank clamped to min(rows, cols), and the group size with
// "one row" (any size ≥ cols) written as 0.
func (c *Codec) shape(rows, cols int) (rank, group int) {
	rank = min(c.rank, rows, cols)
	group = c.group
	if group >= cols {
		group = 0
	}
	return rank, group
}

// PayloadSize returns the payload size in bytes of a rows×cols matrix at
// the given rank and INT4 group size (0 = one row):
//
//	15 + 2·rows·rank + 2·rank·cols + 2048 + rows·ceil(cols/4)
//	   + ceil(rows·cols/2) + 4·rows·ceil(cols/group)
//
// It fails if a dimension is out of range or the matrix has more than
// tensor.MaxElems elements.
func PayloadSize(rows, cols, rank, group int) (int64, error) {
	if rows < 1 || cols < 1 || rows > math.MaxUint32 || cols > math.MaxUint32 ||
		rank < 0 || rank > min(rows, cols, MaxRank) || group < 0 || group > math.MaxUint32 {
		return 0, fmt.Errorf("tenpak_x_v1: invalid shape %d×%d rank %d group %d", rows, cols, rank, group)
	}
	res, err := q4.Layout{Rows: rows, Cols: cols, Group: group}.SectionSize()
	if err != nil {
		return 0, fmt.Errorf("tenpak_x_v1: %w", err)
	}
	// rows, cols < 2^32 and rank < 2^16: no product below overflows int64.
	vpr := int64(cols+VectorDim-1) / VectorDim
	r, c, k := int64(rows), int64(cols), int64(rank)
	return HeaderSize + 2*r*k + 2*k*c + 2*CodebookSize*VectorDim + r*vpr + int64(res), nil
}

// layout holds the byte offsets of a payload's sections.
type layout struct {
	rows, cols, rank, group, vpr int
	l, r, cb, idx, res, end      int
}

func newLayout(rows, cols, rank, group int) (layout, error) {
	size, err := PayloadSize(rows, cols, rank, group)
	if err != nil {
		return layout{}, err
	}
	if size > math.MaxInt {
		return layout{}, fmt.Errorf("tenpak_x_v1: %d×%d payload too large", rows, cols)
	}
	p := layout{rows: rows, cols: cols, rank: rank, group: group, vpr: (cols + VectorDim - 1) / VectorDim}
	p.l = HeaderSize
	p.r = p.l + 2*rows*rank
	p.cb = p.r + 2*rank*cols
	p.idx = p.cb + 2*CodebookSize*VectorDim
	p.res = p.idx + rows*p.vpr
	p.end = int(size)
	return p, nil
}

func (p layout) q4() q4.Layout { return q4.Layout{Rows: p.rows, Cols: p.cols, Group: p.group} }

// Cost returns the peak working memory of Encode for t (Decode needs
// less): a float32 copy of the matrix, the payload, the sketch and SVD
// matrices, and the k-means sample.
func (c *Codec) Cost(t tensor.Info) int64 {
	rows, cols := t.Matrix()
	if rows < 1 || cols < 1 || rows > math.MaxUint32 || cols > math.MaxUint32 {
		return 0
	}
	rank, group := c.shape(int(rows), int(cols))
	size, err := PayloadSize(int(rows), int(cols), rank, group)
	if err != nil {
		return 0
	}
	k := min(int64(rank+Oversampling), rows, cols)
	// Sketch: Y and Zᵀ in float32, a float64 QR copy with its workspace,
	// Bᵀ and gonum's SVD copy, U and V, and the factors.
	sketch := 4*(rows+cols)*k + 8*(max(rows, cols)+64)*k + 8*(5*cols+2*k)*k + 4*(rows+cols)*int64(rank)
	// k-means: sample vectors and weights, assignments and distances.
	vpr := (cols + VectorDim - 1) / VectorDim
	kmeans := min(int64(MaxTrainVectors), rows*vpr) * (2*4*VectorDim + 1 + 4 + 4)
	// Small temporaries: k-means trees, gonum workspaces.
	const small = 1 << 20
	return 4*rows*cols + size + sketch + kmeans + 16*cols + 4*rows + small
}

// Encode writes the tenpak_x_v1 payload of t. It returns an error wrapping
// codec.ErrUnsupported for an empty tensor, a dimension above 2^32−1,
// NaN or infinite elements, or values whose factors or scales overflow
// FP16.
func (c *Codec) Encode(w io.Writer, t tensor.Info, x []float32) error {
	elems, err := tensor.NumElems(t.Shape)
	if err != nil {
		return fmt.Errorf("tenpak_x_v1: tensor %q: %w", t.Name, err)
	}
	if elems != int64(len(x)) {
		return fmt.Errorf("tenpak_x_v1: tensor %q has %d elements, got %d values", t.Name, elems, len(x))
	}
	r64, c64 := t.Matrix()
	if elems == 0 || r64 > math.MaxUint32 || c64 > math.MaxUint32 {
		return fmt.Errorf("%w: tenpak_x_v1: tensor %q: %d×%d matrix is empty or has a dimension above 2^32−1", codec.ErrUnsupported, t.Name, r64, c64)
	}
	for i, v := range x {
		// Not finite, or beyond the FP16 range of the stored factors
		// and codebooks (and large enough for the float32 products
		// before the SVD to overflow, on which LAPACK never converges).
		if !(math.Abs(float64(v)) <= maxAbs) {
			return fmt.Errorf("%w: tenpak_x_v1: tensor %q: element %d is %v, beyond the FP16 range", codec.ErrUnsupported, t.Name, i, v)
		}
	}
	rows, cols := int(r64), int(c64)
	rank, group := c.shape(rows, cols)
	p, err := newLayout(rows, cols, rank, group)
	if err != nil {
		return err
	}
	buf := make([]byte, p.end)
	buf[0] = Version
	binary.LittleEndian.PutUint32(buf[1:], uint32(rows))
	binary.LittleEndian.PutUint32(buf[5:], uint32(cols))
	binary.LittleEndian.PutUint16(buf[9:], uint16(rank))
	binary.LittleEndian.PutUint32(buf[11:], uint32(group))
	if err := c.encode(buf, p, x); err != nil {
		return fmt.Errorf("tenpak_x_v1: tensor %q: %w", t.Name, err)
	}
	_, err = w.Write(buf)
	return err
}

// maxAbs is the largest magnitude Encode accepts: FP16's largest value.
const maxAbs = 65504

// errRange is wrapped by encode when a stored FP16 value would overflow.
var errRange = fmt.Errorf("%w: values exceed the FP16 range", codec.ErrUnsupported)

func (c *Codec) encode(buf []byte, p layout, x []float32) error {
	workers := c.nworkers()
	rows, cols := p.rows, p.cols
	imp := importance(x, rows, cols, workers)

	// Low-rank factors of W·diag(sqrt(importance)).
	work := make([]float32, len(x))
	sq := make([]float32, cols)
	isq := make([]float64, cols)
	for j, v := range imp {
		sq[j] = float32(math.Sqrt(v))
		isq[j] = 1 / math.Sqrt(v)
	}
	par.For(rows, 1, rowChunk(cols), workers, func(r0, r1 int) error {
		for i := r0 * cols; i < r1*cols; i += cols {
			for j, s := range sq {
				work[i+j] = x[i+j] * s
			}
		}
		return nil
	})
	lf, rf, err := factor(work, rows, cols, p.rank, isq, rand.New(rand.NewPCG(c.seed, streamSketch)), workers)
	if err != nil {
		return err
	}
	if !putHalves(buf[p.l:p.r], lf) || !putHalves(buf[p.r:p.cb], rf) {
		return fmt.Errorf("%w (low-rank factors)", errRange)
	}

	// E = W − L̂·R̂.
	copy(work, x)
	par.For(rows, 1, max(decodeRows, rowChunk(cols)), workers, func(r0, r1 int) error {
		lowRankRows(work, lf, rf, r0, r1, p.rank, cols, -1, true)
		return nil
	})

	// Vector quantization of E, then E2 = E − C[idx] in place.
	wcol := make([]vec, p.vpr) // weights of the vectors of column group j
	for j := range wcol {
		for k := range VectorDim {
			if col := j*VectorDim + k; col < cols {
				wcol[j][k] = float32(imp[col])
			}
		}
	}
	sx, sw := trainingSample(work, wcol, p, rand.New(rand.NewPCG(c.seed, streamKMeans)))
	cb := kmeans(sx, sw, rand.New(rand.NewPCG(c.seed, streamKMeans+1)), workers)
	for i := range cb {
		for k := range VectorDim {
			cb[i][k] = tensor.RoundHalf(cb[i][k])
		}
	}
	for i := range cb {
		if !putHalves(buf[p.cb+2*VectorDim*i:p.cb+2*VectorDim*(i+1)], cb[i][:]) {
			return fmt.Errorf("%w (codebook)", errRange)
		}
	}
	tree := newKDTree(cb)
	idx := buf[p.idx:p.res]
	par.For(rows, 1, rowChunk(cols), workers, func(r0, r1 int) error {
		var stack kdStack
		for r := r0; r < r1; r++ {
			row := work[r*cols : (r+1)*cols]
			for j := range p.vpr {
				e := vector(row, j)
				k := tree.nearest(&e, &wcol[j], -1, &stack)
				idx[r*p.vpr+j] = byte(k)
				for d, v := range cb[k] {
					if col := j*VectorDim + d; col < cols {
						row[col] -= v
					}
				}
			}
		}
		return nil
	})

	// INT4 residual.
	if err := q4.Encode(buf[p.res:], work, p.q4(), workers); err != nil {
		return fmt.Errorf("%w (residual): %v", errRange, err)
	}
	return nil
}

// rowChunk returns a number of rows worth about 64K weights, the smallest
// piece of work handed to a goroutine.
func rowChunk(cols int) int { return max(1, (1<<16)/cols) }

// vector returns vector j of a row: row[4j:4j+4], zero-padded.
func vector(row []float32, j int) vec {
	var e vec
	if c := j * VectorDim; c+VectorDim <= len(row) {
		copy(e[:], row[c:c+VectorDim])
	} else {
		copy(e[:], row[c:])
	}
	return e
}

// importance returns the column importances of the rows×cols matrix x:
// the mean absolute value of each column, mapped linearly so that the
// smallest becomes 0.5 and the largest 2.0 (all 1.0 if they are equal).
func importance(x []float32, rows, cols, workers int) []float64 {
	imp := make([]float64, cols)
	// Columns are summed in row order whatever the chunking.
	par.For(cols, 64, 256, workers, func(c0, c1 int) error {
		acc := imp[c0:c1]
		for r := range rows {
			row := x[r*cols+c0 : r*cols+c1]
			for j, v := range row {
				acc[j] += math.Abs(float64(v))
			}
		}
		return nil
	})
	lo, hi := math.Inf(1), math.Inf(-1)
	for j := range imp {
		imp[j] /= float64(rows)
		lo, hi = min(lo, imp[j]), max(hi, imp[j])
	}
	for j := range imp {
		if hi > lo {
			imp[j] = 0.5 + 1.5*(imp[j]-lo)/(hi-lo)
		} else {
			imp[j] = 1
		}
	}
	return imp
}

// trainingSample returns the k-means training vectors and their weights:
// every vector of E if there are at most MaxTrainVectors, else one vector
// chosen uniformly at random from each of MaxTrainVectors equal strata of
// the row-major vector order.
func trainingSample(e []float32, wcol []vec, p layout, rng *rand.Rand) (x, w []vec) {
	n := p.rows * p.vpr
	s := min(n, MaxTrainVectors)
	x, w = make([]vec, s), make([]vec, s)
	for i := range s {
		v := i
		if s < n {
			lo, hi := i*n/s, (i+1)*n/s
			v = lo + rng.IntN(hi-lo)
		}
		r, j := v/p.vpr, v%p.vpr
		x[i] = vector(e[r*p.cols:(r+1)*p.cols], j)
		w[i] = wcol[j]
	}
	return x, w
}

// putHalves writes v as little-endian FP16 into b and reports whether
// every value is finite in FP16.
func putHalves(b []byte, v []float32) bool {
	ok := true
	for i, f := range v {
		h := tensor.FloatToHalf(f)
		ok = ok && h&0x7C00 != 0x7C00
		binary.LittleEndian.PutUint16(b[2*i:], h)
	}
	return ok
}

// getHalves decodes little-endian FP16 values from b into v and reports
// whether every value is finite.
func getHalves(v []float32, b []byte) bool {
	ok := true
	for i := range v {
		h := binary.LittleEndian.Uint16(b[2*i:])
		ok = ok && h&0x7C00 != 0x7C00
		v[i] = tensor.HalfToFloat(h)
	}
	return ok
}

// Decode reconstructs t from a tenpak_x_v1 payload: W' = L·R + C[idx] +
// (q·scale + offset). It returns an error wrapping codec.ErrCorrupt if the
// header disagrees with t, the payload length is not exactly the one the
// header implies, or a stored FP16 value is NaN or infinite; every check
// is made before dst is written, so on error dst is unchanged.
func (c *Codec) Decode(dst []float32, payload []byte, t tensor.Info, version uint16) error {
	p, err := parseHeader(payload, t, len(dst), version)
	if err != nil {
		return fmt.Errorf("%w: tenpak_x_v1: tensor %q: %v", codec.ErrCorrupt, t.Name, err)
	}
	rows, cols := p.rows, p.cols
	var cb [CodebookSize]vec
	for i := range cb {
		if !getHalves(cb[i][:], payload[p.cb+2*VectorDim*i:]) {
			return fmt.Errorf("%w: tenpak_x_v1: tensor %q: codebook entry %d is not finite", codec.ErrCorrupt, t.Name, i)
		}
	}
	res, err := q4.Parse(payload[p.res:], p.q4())
	if err != nil {
		return fmt.Errorf("%w: tenpak_x_v1: tensor %q: residual: %v", codec.ErrCorrupt, t.Name, err)
	}
	lf := make([]float32, rows*p.rank)
	rf := make([]float32, p.rank*cols)
	if !getHalves(lf, payload[p.l:p.r]) || !getHalves(rf, payload[p.r:p.cb]) {
		return fmt.Errorf("%w: tenpak_x_v1: tensor %q: low-rank factors are not finite", codec.ErrCorrupt, t.Name)
	}
	idx := payload[p.idx:p.res]
	// Each block of rows is finished (L·R, codebook, residual) while it is
	// in cache.
	par.For(rows, 1, max(decodeRows, rowChunk(cols)), c.nworkers(), func(r0, r1 int) error {
		for b0 := r0; b0 < r1; b0 += decodeRows {
			b1 := min(b0+decodeRows, r1)
			lowRankRows(dst, lf, rf, b0, b1, p.rank, cols, 1, false)
			for r := b0; r < b1; r++ {
				addCodebook(dst[r*cols:(r+1)*cols], idx[r*p.vpr:(r+1)*p.vpr], &cb)
			}
			res.DequantizeRows(dst, b0, b1, true)
		}
		return nil
	})
	return nil
}

// Decoding works on blocks of decodeRows rows and decodeCols columns: a
// block of R (rank×decodeCols) and of the output stay in the L1/L2 caches.
const (
	decodeRows = 32
	decodeCols = 1024
)

// lowRankRows adds alpha·(L·R) to rows [r0, r1) of the rows×cols matrix
// dst, or stores it there unless accumulate: dst[i,c] (or 0) is updated by
// alpha·L[i,k]·R[k,c] for k in order. It works on blocks of decodeCols
// columns so that the block of R stays in cache.
func lowRankRows(dst, lf, rf []float32, r0, r1, rank, cols int, alpha float32, accumulate bool) {
	for c0 := 0; c0 < cols; c0 += decodeCols {
		n := min(decodeCols, cols-c0)
		for i := r0; i < r1; i++ {
			out := dst[i*cols+c0 : i*cols+c0+n]
			if !accumulate {
				clear(out)
			}
			y := blas32.Vector{N: n, Inc: 1, Data: out}
			for k, a := range lf[i*rank : (i+1)*rank] {
				if a != 0 {
					blas32.Axpy(alpha*a, blas32.Vector{N: n, Inc: 1, Data: rf[k*cols+c0 : k*cols+c0+n]}, y)
				}
			}
		}
	}
}

// addCodebook adds the codebook entries C[idx[j]] to consecutive groups of
// 4 elements of row; the last group may be partial.
func addCodebook(row []float32, idx []byte, cb *[CodebookSize]vec) {
	full := len(row) / VectorDim
	for j, k := range idx[:full] {
		e := &cb[k]
		o := row[j*VectorDim : j*VectorDim+VectorDim : j*VectorDim+VectorDim]
		o[0] += e[0]
		o[1] += e[1]
		o[2] += e[2]
		o[3] += e[3]
	}
	if full < len(idx) {
		e := &cb[idx[full]]
		for d, col := 0, full*VectorDim; col < len(row); d, col = d+1, col+1 {
			row[col] += e[d]
		}
	}
}

// parseHeader checks the record version, the header and that t and a
// destination of n elements agree with it, and returns the payload layout.
func parseHeader(b []byte, t tensor.Info, n int, version uint16) (layout, error) {
	if version != Version {
		return layout{}, fmt.Errorf("unsupported payload version %d (supported 1)", version)
	}
	if len(b) < HeaderSize {
		return layout{}, fmt.Errorf("payload of %d bytes is shorter than the %d-byte header", len(b), HeaderSize)
	}
	if b[0] != Version {
		return layout{}, fmt.Errorf("unsupported layout version %d (supported 1)", b[0])
	}
	elems, err := tensor.NumElems(t.Shape)
	if err != nil {
		return layout{}, err
	}
	if elems != int64(n) {
		return layout{}, fmt.Errorf("tensor has %d elements, destination holds %d", elems, n)
	}
	r, c := t.Matrix()
	rows := int64(binary.LittleEndian.Uint32(b[1:]))
	cols := int64(binary.LittleEndian.Uint32(b[5:]))
	rank := int(binary.LittleEndian.Uint16(b[9:]))
	group := int64(binary.LittleEndian.Uint32(b[11:]))
	if rows != r || cols != c {
		return layout{}, fmt.Errorf("payload is for a %d×%d matrix, tensor is %d×%d", rows, cols, r, c)
	}
	if rows == 0 || cols == 0 {
		return layout{}, fmt.Errorf("empty %d×%d matrix", rows, cols)
	}
	if int64(rank) > min(rows, cols) {
		return layout{}, fmt.Errorf("rank %d exceeds min(%d, %d)", rank, rows, cols)
	}
	p, err := newLayout(int(rows), int(cols), rank, int(group))
	if err != nil {
		return layout{}, err
	}
	if len(b) != p.end {
		return layout{}, fmt.Errorf("payload is %d bytes, header implies %d", len(b), p.end)
	}
	return p, nil
}

// roundHalves rounds every element of v to the nearest FP16 value.
func roundHalves(v []float32) {
	for i, f := range v {
		v[i] = tensor.RoundHalf(f)
	}
}
