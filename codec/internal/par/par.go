// Package par runs independent pieces of a numeric loop on a bounded number
// of goroutines. The split of [0, n) into chunks depends only on n and the
// grain, never on the number of goroutines, so callers that write disjoint
// outputs per index get the same result for any worker count.
package par

import "sync"

// For calls fn(lo, hi) for consecutive chunks [lo, hi) covering [0, n), on at
// most workers goroutines (workers < 1 means 1). Every chunk except the last
// holds a multiple of grain indices (grain < 1 means 1) and at least minChunk
// indices, so that small loops run on the calling goroutine. For returns the
// error of the lowest-numbered chunk that failed, or nil.
func For(n, grain, minChunk, workers int, fn func(lo, hi int) error) error {
	if n <= 0 {
		return nil
	}
	grain = max(grain, 1)
	workers = max(workers, 1)
	chunk := max(minChunk, grain)
	chunk = (chunk + grain - 1) / grain * grain
	nchunks := (n + chunk - 1) / chunk
	if workers == 1 || nchunks == 1 {
		for lo := 0; lo < n; lo += chunk {
			if err := fn(lo, min(lo+chunk, n)); err != nil {
				return err
			}
		}
		return nil
	}
	errs := make([]error, nchunks)
	var (
		mu   sync.Mutex
		next int
		wg   sync.WaitGroup
	)
	for range min(workers, nchunks) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				c := next
				next++
				mu.Unlock()
				if c >= nchunks {
					return
				}
				lo := c * chunk
				errs[c] = fn(lo, min(lo+chunk, n))
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
