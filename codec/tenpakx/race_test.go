//go:build race

package tenpakx

// raceEnabled reports whether the race detector is on; the slowest tests
// then run on smaller inputs.
const raceEnabled = true
