package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// binDir holds the daemon binary built for this run; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	code := func() int {
		defer func() {
			if binDir != "" {
				_ = os.RemoveAll(binDir)
			}
		}()
		// goleak's VerifyTestMain would exit before the binary is removed.
		code := m.Run()
		if code == 0 {
			if err := goleak.Find(); err != nil {
				fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
				return 1
			}
		}
		return code
	}()
	os.Exit(code)
}

// buildBinary builds the daemon once per run; it is what every fanout
// process of the tests runs. It is built as users run it, without the race
// detector even under go test -race: the daemon's concurrency runs under
// the detector in the root package's tests (in-process daemons, several
// instances, Redis restarts, shutdowns), a race-built daemon costs several
// times the CPU, which on a 2-core machine starves the timing of these
// scenarios and takes ./test.sh past its 4 minutes (190 s plain, 235 s
// race-built, measured), and the drain and failover gaps the tests log
// are then those of the real binary. FANOUT_E2E_RACE=1 builds it with
// -race for a deeper run; every process's output is checked for a DATA
// RACE report either way. The build reuses the go build cache, so it
// costs a link.
var buildBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "fanout-e2e-")
	if err != nil {
		return "", err
	}
	binDir = dir
	bin := filepath.Join(dir, "fanout")
	args := []string{"build", "-o", bin}
	if os.Getenv("FANOUT_E2E_RACE") == "1" {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Dir = ".."
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %v: %w\n%s", args, err, out)
	}
	return bin, nil
})

// fanoutBinary returns the daemon binary, building it at the first call.
// It skips t under -short: every test that runs the daemon is slow tier.
func fanoutBinary(t testing.TB) string {
	t.Helper()
	skipShort(t)
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// skipShort skips t under -short.
func skipShort(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("a whole-process test: not under -short")
	}
}
