//go:build race

package e2e

// raceEnabled tells that the tests, and so the daemon binary they run, are
// built with the race detector.
const raceEnabled = true
