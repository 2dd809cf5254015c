package tenpakx

import (
	"errors"
	"math"
	"math/rand/v2"

	"github.com/tpconvert/tpconvert/codec/internal/par"
	"gonum.org/v1/gonum/blas/blas32"
	"gonum.org/v1/gonum/blas/blas64"
	"gonum.org/v1/gonum/lapack/lapack64"
	"gonum.org/v1/gonum/mat"
)

// errSVD is returned if the SVD of the projected matrix does not converge.
var errSVD = errors.New("SVD of the sketched matrix did not converge")

// factor returns the rank-r factors of the rows×cols matrix ws = W·diag(s)
// (row-major float32; s = sqrt(importance), isq[c] = 1/s[c]), rounded to
// FP16:
//
//	L = U_r·diag(S_r)               (rows×r)
//	R = V_rᵀ·diag(isq)              (r×cols)
//
// where ws ≈ U·S·Vᵀ is found by the randomized range finder of Halko,
// Martinsson and Tropp ("Finding structure with randomness", 2011,
// algorithms 4.4 and 5.1): with k = min(r+Oversampling, rows, cols),
//
//	Y = ws·Ω, Ω cols×k Gaussian; Q = qr(Y)
//	PowerIterations times: Q = qr(ws·qr(wsᵀ·Q))
//	Bᵀ = wsᵀ·Q (cols×k); Bᵀ = V·S·Ûᵀ (exact thin SVD); U = Q·Û.
//
// When k = rows the sketch is skipped (Q = I, exact SVD of ws). The large
// products run in float32 (gonum's blas32), the QR factorizations and
// the SVD in float64. Q factors are formed thin (rows×k) with LAPACK's
// Dgeqrf and Dorgqr: mat.QR would form the full rows×rows Q. The products
// with ws use long dot products and axpys (mulABt, mulAtB): with only k
// columns on the other side, gonum's blocked Sgemm spends its time on
// 40-element inner loops.
func factor(ws []float32, rows, cols, r int, isq []float64, rng *rand.Rand, workers int) (lf, rf []float32, err error) {
	lf, rf = make([]float32, rows*r), make([]float32, r*cols)
	if r == 0 {
		return lf, rf, nil
	}
	k := min(r+Oversampling, rows, cols)
	bt := make([]float64, cols*k) // Bᵀ, cols×k
	var q []float32               // rows×k, nil for the identity
	if k == rows {
		for i := range rows {
			for j := range cols {
				bt[j*k+i] = float64(ws[i*cols+j])
			}
		}
	} else {
		q = make([]float32, rows*k)
		zt := make([]float32, k*cols) // Ωᵀ, then (wsᵀ·Q)ᵀ
		for i := range zt {
			zt[i] = float32(rng.NormFloat64())
		}
		var qr qrScratch
		mulABt(q, ws, zt, rows, cols, k, workers) // Y = ws·Ω
		qr.orth(q, rows, k, false)
		for range PowerIterations {
			mulAtB(zt, q, ws, rows, cols, k, workers) // Zᵀ = (wsᵀ·Q)ᵀ
			qr.orth(zt, cols, k, true)
			mulABt(q, ws, zt, rows, cols, k, workers) // Y = ws·Z
			qr.orth(q, rows, k, false)
		}
		mulAtB(zt, q, ws, rows, cols, k, workers) // B = Qᵀ·ws
		for j := range k {
			for c := range cols {
				bt[c*k+j] = float64(zt[j*cols+c])
			}
		}
	}
	// gonum's SVD iterates forever on a matrix holding NaN or ±Inf.
	for _, v := range bt {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil, nil, errRange
		}
	}
	var svd mat.SVD
	if !svd.Factorize(mat.NewDense(cols, k, bt), mat.SVDThin) {
		return nil, nil, errSVD
	}
	sv := svd.Values(nil)
	var v, uh mat.Dense
	svd.UTo(&v)  // cols×k: right singular vectors of B
	svd.VTo(&uh) // k×k: left singular vectors of B
	for c := range cols {
		for j := range r {
			rf[j*cols+c] = float32(v.At(c, j) * isq[c])
		}
	}
	for i := range rows {
		for j := range r {
			var u float64
			if q == nil {
				u = uh.At(i, j)
			} else {
				for t := range k {
					u += float64(q[i*k+t]) * uh.At(t, j)
				}
			}
			lf[i*r+j] = float32(u * sv[j])
		}
	}
	roundHalves(lf)
	roundHalves(rf)
	return lf, rf, nil
}

// mulABt computes y = a·btᵀ for the row-major rows×cols matrix a and k×cols
// matrix bt (y is rows×k) as rows·k dot products of length cols, which
// keeps gonum's vectorized inner loop long. Rows are shared among up to
// workers goroutines; every element is one dot product, so the result does
// not depend on their number.
func mulABt(y, a, bt []float32, rows, cols, k, workers int) {
	par.For(rows, 1, rowChunk(cols), workers, func(r0, r1 int) error {
		for i := r0; i < r1; i++ {
			ar := blas32.Vector{N: cols, Inc: 1, Data: a[i*cols : (i+1)*cols]}
			for j := range k {
				y[i*k+j] = blas32.Dot(ar, blas32.Vector{N: cols, Inc: 1, Data: bt[j*cols : (j+1)*cols]})
			}
		}
		return nil
	})
}

// sketchCols is the column block of mulAtB: k rows of that many float32
// stay in the L2 cache while the rows of a stream past.
const sketchCols = 1024

// mulAtB computes zt = qᵀ·a for the rows×k matrix q and rows×cols matrix
// a (zt is k×cols), as axpys of rows of a into rows of zt, block of columns
// by block of columns; blocks are shared among up to workers goroutines and
// every element is summed over the rows in order.
func mulAtB(zt, q, a []float32, rows, cols, k, workers int) {
	par.For(cols, sketchCols, sketchCols, workers, func(c0, c1 int) error {
		n := c1 - c0
		for j := range k {
			clear(zt[j*cols+c0 : j*cols+c1])
		}
		for i := range rows {
			ar := blas32.Vector{N: n, Inc: 1, Data: a[i*cols+c0 : i*cols+c1]}
			for j, v := range q[i*k : (i+1)*k] {
				if v != 0 {
					blas32.Axpy(v, ar, blas32.Vector{N: n, Inc: 1, Data: zt[j*cols+c0 : j*cols+c1]})
				}
			}
		}
		return nil
	})
}

// qrScratch holds the float64 buffers of orth, sized for the larger of the
// two tall matrices it is applied to, so that the power iterations reuse
// them.
type qrScratch struct {
	a, tau, work []float64
}

// orth replaces the columns of the tall m×n matrix g (m ≥ n, row-major;
// stored transposed, n×m, if trans) with an orthonormal basis of their
// span: the thin Q of its QR factorization, in float64.
func (s *qrScratch) orth(g []float32, m, n int, trans bool) {
	if len(s.a) < m*n {
		s.a = make([]float64, m*n)
	}
	a := blas64.General{Rows: m, Cols: n, Stride: n, Data: s.a[:m*n]}
	for i := range m {
		for j := range n {
			if trans {
				a.Data[i*n+j] = float64(g[j*m+i])
			} else {
				a.Data[i*n+j] = float64(g[i*n+j])
			}
		}
	}
	if len(s.tau) < n {
		s.tau = make([]float64, n)
	}
	tau := s.tau[:n]
	query := []float64{0}
	lapack64.Geqrf(a, tau, query, -1)
	need := max(int(query[0]), n)
	lapack64.Orgqr(a, tau, query, -1)
	need = max(need, int(query[0]))
	if len(s.work) < need {
		s.work = make([]float64, need)
	}
	lapack64.Geqrf(a, tau, s.work, len(s.work))
	lapack64.Orgqr(a, tau, s.work, len(s.work))
	for i := range m {
		for j := range n {
			if trans {
				g[j*m+i] = float32(a.Data[i*n+j])
			} else {
				g[i*n+j] = float32(a.Data[i*n+j])
			}
		}
	}
}
