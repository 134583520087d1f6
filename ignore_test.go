package main

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path"
	"regexp"
	"strings"
	"testing"
)

// What the builds, scripts and tests write into the tree stays out of git
// (.gitignore) and out of the Docker build context (.dockerignore), while
// everything the image's build reads stays in; and no large file is ever
// committed again (a 12.5 MB fanout-bench binary once was).

// buildOutputs is every path a build, a script or a test writes into the
// tree (bench.sh writes into a temporary directory, and its PERF_DIR
// wherever it is pointed).
var buildOutputs = []struct{ path, writer string }{
	{"fanout", "start.sh; go build at the root; e2e's TestStartScriptStartsALocalRedisAndTheDaemon"},
	{"fanout-bench", "go build ./cmd/fanout-bench at the root"},
	{"fanout-tail", "go build ./cmd/fanout-tail at the root"},
	{"cmd/fanout-bench/fanout-bench", "go build in cmd/fanout-bench"},
	{"cmd/fanout-tail/fanout-tail", "go build in cmd/fanout-tail"},
	{"fanout.test", "go test -c, or -cpuprofile (which keeps the test binary)"},
	{"e2e/e2e.test", "go test -c ./e2e in e2e/"},
	{"history/history.test", "go test -c in history/"},
	{"cmd/fanout-bench/fanout-bench.test", "go test -c in cmd/fanout-bench"},
	{"cpu.out", "go test -cpuprofile cpu.out"},
	{"cover.out", "go test -coverprofile cover.out"},
	{"e2e/trace.out", "go test -trace trace.out in e2e/"},
	{"mem.prof", "go test -memprofile mem.prof"},
	{"history/cpu.pprof", "a pprof profile saved from /debug/pprof"},
	{"coverage.cov", "go test -coverprofile coverage.cov"},
	{"perf.data", "perf record"},
	{"perf.data.old", "perf record, the second time"},
	{"perf/S3.perf.data", "PERF_DIR=perf ./bench.sh S3"},
	{".run/redis-6379.log", "start.sh's local Redis"},
	{".run/redis-6379.pid", "start.sh's local Redis"},
	{"e2e/node_modules/playwright-core/package.json", "test.sh (npm install --prefix e2e)"},
	{"e2e/package-lock.json", "npm install without e2e/.npmrc"},
}

// maxTrackedBytes is the largest file the repository may hold (the
// screenshots in docs/ are about 115 KB).
const maxTrackedBytes = 2 << 20

// needGitCheckout skips t outside a git work tree (a source archive).
func needGitCheckout(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not installed")
	}
	if out, err := exec.Command("git", "rev-parse", "--is-inside-work-tree").Output(); err != nil || strings.TrimSpace(string(out)) != "true" {
		t.Skip("not a git checkout")
	}
}

// runGit runs git in the module root and returns its output.
func runGit(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

func TestEveryBuildOutputIsIgnoredByGitAndDocker(t *testing.T) {
	needGitCheckout(t)
	var paths []string
	for _, o := range buildOutputs {
		paths = append(paths, o.path)
	}
	// One line per path: "source:line:pattern<TAB>path", or "::<TAB>path"
	// when nothing ignores it. Only the repository's .gitignore counts,
	// not a developer's global excludes.
	out := runGit(t, strings.Join(paths, "\n")+"\n", "-c", "core.excludesFile=/dev/null",
		"check-ignore", "--no-index", "--verbose", "--non-matching", "--stdin")
	source := map[string]string{}
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		rule, p, _ := strings.Cut(line, "\t")
		source[p] = rule
	}
	docker := readDockerignore(t)
	for _, o := range buildOutputs {
		if rule := source[o.path]; !strings.HasPrefix(rule, ".gitignore:") {
			t.Errorf("%s (written by %s) is not ignored by .gitignore (git check-ignore: %q)", o.path, o.writer, rule)
		}
		if !docker.excludes(o.path) {
			t.Errorf("%s (written by %s) is not excluded by .dockerignore", o.path, o.writer)
		}
	}
}

func TestDockerBuildContextHoldsWhatTheImageBuildReads(t *testing.T) {
	// What `go build .` reads in the Dockerfile: the module's packages the
	// daemon imports, their Go files and embedded files (web/).
	cmd := exec.Command("go", "list", "-deps", "-f",
		`{{if .Module}}{{if eq .Module.Path "fanout"}}{{$dir := .Dir}}{{range .GoFiles}}{{$dir}}/{{.}}
{{end}}{{range .EmbedFiles}}{{$dir}}/{{.}}
{{end}}{{end}}{{end}}`, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	needed := []string{"go.mod", "go.sum"} // COPY go.mod go.sum ./
	for _, file := range strings.Fields(string(out)) {
		rel, ok := strings.CutPrefix(file, root+"/")
		if !ok {
			t.Fatalf("go list named %s, outside %s", file, root)
		}
		needed = append(needed, rel)
	}
	if !containsPrefix(needed, "web/") || !containsPrefix(needed, "history/") {
		t.Fatalf("go list found no web/ or history/ files: %q", needed)
	}
	docker := readDockerignore(t)
	for _, p := range needed {
		if docker.excludes(p) {
			t.Errorf(".dockerignore excludes %s, which the image's go build reads", p)
		}
	}
}

func TestNoTrackedFileIsIgnoredOrLargerThan2MB(t *testing.T) {
	needGitCheckout(t)
	// A pattern too wide (fanout-bench unanchored would ignore the
	// cmd/fanout-bench directory) shows as a tracked file it ignores.
	if out := runGit(t, "", "ls-files", "--cached", "--ignored", "--exclude-per-directory=.gitignore"); out != "" {
		t.Errorf(".gitignore ignores tracked files:\n%s", out)
	}
	for _, p := range strings.Split(strings.TrimSuffix(runGit(t, "", "ls-files", "-z"), "\x00"), "\x00") {
		info, err := os.Lstat(p)
		if err != nil {
			continue // deleted in the work tree
		}
		if info.Size() > maxTrackedBytes {
			t.Errorf("%s is tracked and holds %d bytes, over %d: build outputs and data stay out of git", p, info.Size(), maxTrackedBytes)
		}
	}
}

func TestDockerignoreMatcherFollowsDockersRules(t *testing.T) {
	d := dockerignore{}
	for _, line := range []string{"fanout", "/.run", "**/*.test", "e2e", "docs/*.png", "!docs/keep.png", "cmd/*/x?z"} {
		d.add(line)
	}
	for p, want := range map[string]bool{
		"fanout":           true,
		"cmd/fanout":       false, // patterns start at the root of the context
		"fanout-bench":     false,
		".run/redis.pid":   true, // inside an excluded directory
		"fanout.test":      true, // ** matches no directory too
		"e2e/e2e.test":     true,
		"e2e/console.mjs":  true,
		"docs/console.png": true,
		"docs/keep.png":    false, // a later ! pattern wins
		"docs/history.md":  false,
		"cmd/a/xyz":        true,
		"cmd/a/b/xyz":      false, // * stays within one directory
		"main.go":          false,
	} {
		if got := d.excludes(p); got != want {
			t.Errorf("excludes(%q) = %v, want %v", p, got, want)
		}
	}
}

// dockerignore is a .dockerignore, matched as Docker matches it
// (moby/patternmatcher): each pattern is relative to the context's root,
// * and ? stay within a path element, ** spans any number of them, a path
// is excluded when it or a directory above it matches, and the last
// pattern that matches decides (a ! pattern re-includes).
type dockerignore []dockerPattern

// dockerPattern is one line of a .dockerignore.
type dockerPattern struct {
	re      *regexp.Regexp
	include bool // a ! line
}

// readDockerignore reads the module's .dockerignore.
func readDockerignore(t *testing.T) dockerignore {
	t.Helper()
	f, err := os.Open(".dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var d dockerignore
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		d.add(scanner.Text())
	}
	if err := scanner.Err(); err != nil {
		t.Fatal(err)
	}
	return d
}

// add appends one line: blank lines and # comments are skipped.
func (d *dockerignore) add(line string) {
	line = strings.TrimSpace(line)
	if line == "" || strings.HasPrefix(line, "#") {
		return
	}
	include := strings.HasPrefix(line, "!")
	line = strings.TrimPrefix(path.Clean(strings.TrimPrefix(line, "!")), "/")
	var re strings.Builder
	re.WriteString("^")
	for i := 0; i < len(line); i++ {
		switch c := line[i]; {
		case c == '*' && i+1 < len(line) && line[i+1] == '*':
			i++
			if i+1 < len(line) && line[i+1] == '/' {
				i++
			}
			if i+1 == len(line) {
				re.WriteString(".*")
			} else {
				re.WriteString("(.*/)?")
			}
		case c == '*':
			re.WriteString("[^/]*")
		case c == '?':
			re.WriteString("[^/]")
		case c == '\\' && i+1 < len(line):
			i++
			re.WriteString(regexp.QuoteMeta(line[i : i+1]))
		default:
			re.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	re.WriteString("$")
	*d = append(*d, dockerPattern{re: regexp.MustCompile(re.String()), include: include})
}

// excludes reports whether p (slash-separated, relative to the context's
// root) is left out of the build context.
func (d dockerignore) excludes(p string) bool {
	excluded := false
	for _, pat := range d {
		for dir := p; dir != "." && dir != "/"; dir = path.Dir(dir) {
			if pat.re.MatchString(dir) {
				excluded = !pat.include
				break
			}
		}
	}
	return excluded
}

// containsPrefix reports whether some path in paths starts with prefix.
func containsPrefix(paths []string, prefix string) bool {
	for _, p := range paths {
		if strings.HasPrefix(p, prefix) {
			return true
		}
	}
	return false
}
