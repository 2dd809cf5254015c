package batch

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/tpconvert/tpconvert/batch/checkout"
)

// Unit is one weight file of one model, the piece of work that sharding
// assigns to one process.
type Unit struct {
	Model  string              `json:"model"`
	Weight checkout.WeightFile `json:"weight"`
	// Shard is the index of the shard that converts the unit.
	Shard int `json:"shard"`
}

// Name returns "model/file", the unit's name in reports.
func (u Unit) Name() string { return u.Model + "/" + u.Weight.Name }

// Units lists the weight files of the checkouts, model by model, and
// assigns each to one of n shards (n >= 1) by size: units are taken
// largest first (ties by name) and each goes to the shard with the fewest
// bytes so far (ties to the lowest index). Every process given the same
// sources computes the same assignment, and the n shards cover every unit
// exactly once.
func Units(cs []checkout.Checkout, n int) []Unit {
	var us []Unit
	for _, c := range cs {
		for _, w := range c.Weights {
			us = append(us, Unit{Model: c.Name, Weight: w})
		}
	}
	if n <= 1 {
		return us
	}
	order := make([]int, len(us))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		if c := cmp.Compare(us[b].Weight.Size, us[a].Weight.Size); c != 0 {
			return c
		}
		return strings.Compare(us[a].Name(), us[b].Name())
	})
	load := make([]int64, n)
	for _, i := range order {
		k := 0
		for j := 1; j < n; j++ {
			if load[j] < load[k] {
				k = j
			}
		}
		us[i].Shard = k
		load[k] += us[i].Weight.Size
	}
	return us
}

// CheckShard reports whether shard i of n is valid: 0 <= i < n.
func CheckShard(i, n int) error {
	if n < 1 || i < 0 || i >= n {
		return fmt.Errorf("shard %d/%d out of range: want 0 <= I < N", i, n)
	}
	return nil
}

// ErrShardCount is matched (with errors.Is) by the error of ShardFromEnv
// when the environment names this process's shard but not the number of
// shards, and none was given.
var ErrShardCount = errors.New("the number of shards is not given")

// ShardFromEnv reads this process's shard i of n from a Kubernetes
// Indexed Job (JOB_COMPLETION_INDEX, with count shards: the job's
// completions) or a Slurm job array (SLURM_ARRAY_TASK_ID, numbered from
// SLURM_ARRAY_TASK_MIN in steps of SLURM_ARRAY_TASK_STEP,
// SLURM_ARRAY_TASK_COUNT tasks unless count is given). getenv is
// os.Getenv or a stand-in; count 0 means not given.
func ShardFromEnv(getenv func(string) string, count int) (i, n int, err error) {
	atoi := func(name string, def int) (int, error) {
		v := strings.TrimSpace(getenv(name))
		if v == "" {
			return def, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return 0, fmt.Errorf("%s=%q is not a number", name, v)
		}
		return n, nil
	}
	checked := func(i, n int) (int, int, error) {
		if err := CheckShard(i, n); err != nil {
			return 0, 0, err
		}
		return i, n, nil
	}
	if count < 0 {
		return 0, 0, fmt.Errorf("shard count %d: want a positive number", count)
	}
	if getenv("JOB_COMPLETION_INDEX") != "" {
		i, err := atoi("JOB_COMPLETION_INDEX", 0)
		if err != nil {
			return 0, 0, err
		}
		if count == 0 {
			return 0, 0, fmt.Errorf("JOB_COMPLETION_INDEX is set, but %w (the job's completions)", ErrShardCount)
		}
		return checked(i, count)
	}
	if getenv("SLURM_ARRAY_TASK_ID") != "" {
		id, err := atoi("SLURM_ARRAY_TASK_ID", 0)
		if err != nil {
			return 0, 0, err
		}
		lo, err := atoi("SLURM_ARRAY_TASK_MIN", 0)
		if err != nil {
			return 0, 0, err
		}
		step, err := atoi("SLURM_ARRAY_TASK_STEP", 1)
		if err != nil {
			return 0, 0, err
		}
		n := count
		if n == 0 {
			if n, err = atoi("SLURM_ARRAY_TASK_COUNT", 0); err != nil {
				return 0, 0, err
			}
		}
		if n == 0 {
			return 0, 0, fmt.Errorf("SLURM_ARRAY_TASK_COUNT is not set and %w", ErrShardCount)
		}
		if step < 1 || (id-lo)%step != 0 {
			return 0, 0, fmt.Errorf("SLURM_ARRAY_TASK_ID=%d is not on the array's steps (min %d, step %d)", id, lo, step)
		}
		return checked((id-lo)/step, n)
	}
	return 0, 0, errors.New("neither JOB_COMPLETION_INDEX nor SLURM_ARRAY_TASK_ID is set")
}
