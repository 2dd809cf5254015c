package stream

import (
	"context"
	"runtime"
	"sync"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/tpconvert/tpconvert/tensor"
)

// ordered runs work(i) for i in [0, n) on up to workers goroutines and
// calls write(i, result) for every i in increasing order from a single
// goroutine, so the output does not depend on scheduling.
//
// Memory is bounded by bytes, not goroutines: before work(i) starts, cost(i)
// bytes (clamped to maxMem, so a tensor larger than the budget runs alone)
// are reserved from a weighted semaphore of maxMem bytes, and they are given
// back only after write(i) returns. Reservations are taken in index order,
// so the item the writer waits for always holds its reservation and the
// scheme cannot deadlock.
func ordered[T any](ctx context.Context, n, workers int, maxMem int64,
	cost func(i int) int64,
	work func(ctx context.Context, i int) (T, error),
	write func(i int, v T) error,
) error {
	return orderedUntil(ctx, n, workers, maxMem, cost, nil, work, write)
}

// orderedUntil is ordered where item i's reservation is given back only
// after write(until(i)) returns (until(i) ≥ i; nil: i), so that memory a
// work function leaves for later items (a payload filled by the chunks
// that follow it) stays reserved. The items from i to until(i) must fit
// in maxMem together, or the dispatcher waits for ever.
func orderedUntil[T any](ctx context.Context, n, workers int, maxMem int64,
	cost func(i int) int64,
	until func(i int) int,
	work func(ctx context.Context, i int) (T, error),
	write func(i int, v T) error,
) error {
	if workers <= 0 {
		workers = runtime.NumCPU()
	}
	if maxMem <= 0 {
		maxMem = 1 << 62
	}
	sem := semaphore.NewWeighted(maxMem)
	g, gctx := errgroup.WithContext(ctx)

	type done struct {
		i int
		v T
	}
	results := make(chan done, workers)
	weights := make([]int64, n)
	var dispErr error // written before results is closed

	// Dispatcher: reserve memory in index order, then run the work.
	g.Go(func() error {
		wg, wctx := errgroup.WithContext(gctx)
		wg.SetLimit(workers)
		for i := 0; i < n; i++ {
			w := max(min(cost(i), maxMem), 1)
			if err := sem.Acquire(wctx, w); err != nil {
				break
			}
			weights[i] = w
			if reserveHook != nil {
				reserveHook(i, w)
			}
			wg.Go(func() error {
				v, err := work(wctx, i)
				if err != nil {
					return err
				}
				select {
				case results <- done{i, v}:
					return nil
				case <-wctx.Done():
					return wctx.Err()
				}
			})
		}
		err := wg.Wait()
		if err == nil {
			err = gctx.Err()
		}
		dispErr = err
		close(results)
		return err
	})

	// Writer: the only goroutine that touches the output.
	g.Go(func() error {
		pending := make(map[int]T)
		held := make(map[int]int64) // weights to give back after write(key)
		next := 0
		for r := range results {
			pending[r.i] = r.v
			for {
				v, ok := pending[next]
				if !ok {
					break
				}
				delete(pending, next)
				err := write(next, v)
				if until != nil && until(next) > next {
					held[until(next)] += weights[next]
				} else {
					sem.Release(weights[next])
				}
				if w, ok := held[next]; ok {
					delete(held, next)
					sem.Release(w)
				}
				if err != nil {
					return err
				}
				next++
			}
		}
		if next != n {
			// The dispatcher stopped early; its error explains why.
			if dispErr != nil {
				return dispErr
			}
			return context.Canceled
		}
		return nil
	})
	err := g.Wait()
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// reserveHook, if set (by tests), hears of every reservation: item i
// holds w bytes of the budget.
var reserveHook func(i int, w int64)

// tracker turns per-element progress inside tensors into the Progress
// calls of Options: serialized, in bytes, and adding up to each tensor's
// size once it is written.
type tracker struct {
	fn   func(tensor.Info, int64)
	mu   sync.Mutex
	done []int64 // bytes reported per tensor
}

func newTracker(fn func(tensor.Info, int64), n int) *tracker {
	if fn == nil {
		return &tracker{}
	}
	return &tracker{fn: fn, done: make([]int64, n)}
}

// within returns the callback for tensor i's codec: elems more of its
// elements are done, of size bytes in all. Nil without a Progress
// function.
func (p *tracker) within(i int, t tensor.Info, size int64) func(elems int64) {
	n := t.Elems()
	if p.fn == nil || n == 0 {
		return nil
	}
	var elems int64
	return func(k int64) {
		p.mu.Lock()
		defer p.mu.Unlock()
		elems = min(elems+k, n)
		// Up to but not including the whole size: the last bytes are
		// reported when the tensor is written.
		b := min(int64(float64(size)*(float64(elems)/float64(n))), size-1) // no int64 overflow for huge tensors
		if d := b - p.done[i]; d > 0 {
			p.done[i] = b
			p.fn(t, d)
		}
	}
}

// written reports the rest of tensor i's size bytes.
func (p *tracker) written(i int, t tensor.Info, size int64) {
	if p.fn == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if d := size - p.done[i]; d > 0 {
		p.done[i] = size
		p.fn(t, d)
	}
}

// upTo reports that tensor i is done up to b of its size bytes (the
// rest when it is written).
func (p *tracker) upTo(i int, t tensor.Info, b, size int64) {
	if p.fn == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if d := min(b, size-1) - p.done[i]; d > 0 {
		p.done[i] += d
		p.fn(t, d)
	}
}
