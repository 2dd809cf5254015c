//go:build !unix

package tenpakx3

import "time"

// cpuTime is not measured here: the CPU metrics of the benchmarks are 0.
func cpuTime() time.Duration { return 0 }
