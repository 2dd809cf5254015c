package stream

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestOrderedWritesInOrderWithinBudget(t *testing.T) {
	const n, maxMem = 200, 100
	r := rand.New(rand.NewPCG(1, 2))
	costs := make([]int64, n)
	for i := range costs {
		costs[i] = 1 + r.Int64N(60)
	}
	costs[7] = 1000 // larger than the budget: clamped, runs alone
	var inFlight, peak atomic.Int64
	var mu sync.Mutex
	var got []int
	for _, workers := range []int{1, 2, 8} {
		got = got[:0]
		peak.Store(0)
		err := ordered(context.Background(), n, workers, maxMem,
			func(i int) int64 { return costs[i] },
			func(ctx context.Context, i int) (int, error) {
				c := min(costs[i], maxMem)
				v := inFlight.Add(c)
				for p := peak.Load(); v > p && !peak.CompareAndSwap(p, v); p = peak.Load() {
				}
				time.Sleep(time.Duration(costs[i]%50) * time.Microsecond)
				return i * 10, nil
			},
			func(i, v int) error {
				inFlight.Add(-min(costs[i], maxMem))
				if v != i*10 {
					t.Errorf("write(%d) got value of %d", i, v/10)
				}
				mu.Lock()
				got = append(got, i)
				mu.Unlock()
				return nil
			})
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range got {
			if v != i {
				t.Fatalf("workers=%d: write order %v", workers, got[:i+1])
			}
		}
		if len(got) != n {
			t.Fatalf("workers=%d: %d writes, want %d", workers, len(got), n)
		}
		if p := peak.Load(); p > maxMem {
			t.Errorf("workers=%d: %d bytes in flight, budget %d", workers, p, maxMem)
		}
	}
}

func TestOrderedErrors(t *testing.T) {
	boom := errors.New("boom")
	for _, failAt := range []string{"work", "write"} {
		err := ordered(context.Background(), 50, 4, 1<<20,
			func(int) int64 { return 1 },
			func(ctx context.Context, i int) (int, error) {
				if failAt == "work" && i == 17 {
					return 0, boom
				}
				return i, nil
			},
			func(i, v int) error {
				if failAt == "write" && i == 23 {
					return boom
				}
				if i > 23 {
					t.Errorf("write(%d) after the failure", i)
				}
				return nil
			})
		if !errors.Is(err, boom) {
			t.Errorf("fail in %s: err = %v", failAt, err)
		}
	}
}

// TestOrderedCancel cancels the context from inside the work, when the
// cancelAt-th item starts (the items after it wait for the cancellation):
// ordered must return context.Canceled, and start at most one more item
// per worker after the cancellation.
func TestOrderedCancel(t *testing.T) {
	const cancelAt, workers = 10, 2
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var started atomic.Int64
	done := make(chan error)
	go func() {
		done <- ordered(ctx, 1000, workers, 1<<20, func(int) int64 { return 1 },
			func(ctx context.Context, i int) (int, error) {
				switch n := started.Add(1); {
				case n < cancelAt:
					return i, nil
				case n == cancelAt:
					cancel()
				}
				<-ctx.Done()
				return 0, ctx.Err()
			},
			func(int, int) error { return nil })
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ordered did not stop after cancel")
	}
	if s := started.Load(); s > cancelAt+workers {
		t.Errorf("%d items started, cancelled at the start of item %d with %d workers: cancellation was not prompt", s, cancelAt, workers)
	}
}
