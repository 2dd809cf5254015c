package par

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
)

func TestFor(t *testing.T) {
	for _, tc := range []struct{ n, grain, minChunk, workers int }{
		{0, 1, 1, 4}, {1, 1, 1, 4}, {10, 3, 1, 1}, {100, 2, 7, 3}, {1000, 64, 1, 8}, {5, 1, 100, 2},
	} {
		seen := make([]atomic.Int32, tc.n)
		err := For(tc.n, tc.grain, tc.minChunk, tc.workers, func(lo, hi int) error {
			if lo%tc.grain != 0 || (hi != tc.n && hi%tc.grain != 0) || hi-lo < min(tc.minChunk, tc.n-lo) {
				return fmt.Errorf("chunk [%d, %d) violates grain %d / min %d", lo, hi, tc.grain, tc.minChunk)
			}
			for i := lo; i < hi; i++ {
				seen[i].Add(1)
			}
			return nil
		})
		if err != nil {
			t.Errorf("%+v: %v", tc, err)
		}
		for i := range seen {
			if seen[i].Load() != 1 {
				t.Fatalf("%+v: index %d visited %d times", tc, i, seen[i].Load())
			}
		}
	}
}

func TestForError(t *testing.T) {
	e3, e7 := errors.New("chunk 3"), errors.New("chunk 7")
	for _, workers := range []int{1, 4} {
		err := For(100, 1, 10, workers, func(lo, hi int) error {
			switch lo {
			case 30:
				return e3
			case 70:
				return e7
			}
			return nil
		})
		if err != e3 {
			t.Errorf("workers %d: error %v, want the lowest chunk's", workers, err)
		}
	}
}
