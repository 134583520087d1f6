//go:build !race

package e2e

// raceEnabled tells that the tests (the clients of the daemon) are
// built with the race detector.
const raceEnabled = false
