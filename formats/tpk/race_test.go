//go:build race

package tpk

// raceBuild: under the race detector sync.Pool drops items at random, so
// encoding/json's per-call buffers are not reused and allocation figures
// are larger.
const raceBuild = true
