package main

import (
	"bytes"
	"context"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

// cliResult is what one fanout command line did.
type cliResult struct {
	code           int
	stdout, stderr string
}

// runCLI runs the command line args with env as the environment. No
// command here may start the daemon: runServe would not return.
func runCLI(t *testing.T, env map[string]string, args ...string) cliResult {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := runCommand(context.Background(), args, envOf(env), strings.NewReader(""), &stdout, &stderr)
	return cliResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

// oneLine reports whether s is exactly one line, ending in a newline.
func oneLine(s string) bool {
	return strings.HasSuffix(s, "\n") && strings.Count(s, "\n") == 1
}

func TestHelpListsEveryCommandAndWhereTheConfigurationIs(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}, {"-help"}, {"help", "--help"}} {
		res := runCLI(t, nil, args...)
		if res.code != 0 || res.stderr != "" {
			t.Fatalf("fanout %v: exit %d, stderr %q; want 0 and nothing", args, res.code, res.stderr)
		}
		for _, c := range commands() {
			if !strings.Contains(res.stdout, "\n  "+c.name+" ") || !strings.Contains(res.stdout, c.summary) {
				t.Errorf("fanout %v does not list %s with its summary:\n%s", args, c.name, res.stdout)
			}
		}
		if !strings.Contains(res.stdout, "README.md") || !strings.Contains(res.stdout, `"Configuration"`) {
			t.Errorf("fanout %v does not say where the configuration is documented:\n%s", args, res.stdout)
		}
	}
}

func TestEveryCommandAnswersHelpWithItsUsage(t *testing.T) {
	for _, c := range commands() {
		for _, args := range [][]string{{c.name, "--help"}, {c.name, "-h"}, {"help", c.name}} {
			res := runCLI(t, nil, args...)
			if res.code != 0 || res.stderr != "" {
				t.Errorf("fanout %v: exit %d, stderr %q; want 0 and nothing", args, res.code, res.stderr)
			}
			if !strings.HasPrefix(res.stdout, "usage: fanout") || (c.name != "help" && !strings.Contains(res.stdout, c.name)) {
				t.Errorf("fanout %v: stdout %q, want its usage", args, res.stdout)
			}
		}
	}
}

func TestVersionPrintsVersionCommitAndGoVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		res := runCLI(t, nil, args...)
		if res.code != 0 || res.stderr != "" || !oneLine(res.stdout) {
			t.Fatalf("fanout %v: exit %d, stdout %q, stderr %q; want 0 and one line", args, res.code, res.stdout, res.stderr)
		}
		// A test binary records no commit.
		for _, want := range []string{"fanout " + version, "commit ", runtime.Version()} {
			if !strings.Contains(res.stdout, want) {
				t.Errorf("fanout %v: %q lacks %q", args, res.stdout, want)
			}
		}
	}
}

func TestVersionLineNamesTheCommitAndWhetherTheTreeWasDirty(t *testing.T) {
	build := func(settings ...debug.BuildSetting) *debug.BuildInfo {
		return &debug.BuildInfo{GoVersion: "go1.99.1", Settings: settings}
	}
	rev := debug.BuildSetting{Key: "vcs.revision", Value: "1a986babd4c77d23d419cce6bb0d9779cfa4d045"}
	cases := []struct {
		name string
		info *debug.BuildInfo
		want string
	}{
		{"clean", build(rev, debug.BuildSetting{Key: "vcs.modified", Value: "false"}), "fanout v1.2.3, commit 1a986babd4c77d23d419cce6bb0d9779cfa4d045, go1.99.1 "},
		{"dirty", build(rev, debug.BuildSetting{Key: "vcs.modified", Value: "true"}), "fanout v1.2.3, commit 1a986babd4c77d23d419cce6bb0d9779cfa4d045-dirty, go1.99.1 "},
		{"no vcs", build(), "fanout v1.2.3, commit unknown, go1.99.1 "},
		{"no build info", nil, "fanout v1.2.3, commit unknown, " + runtime.Version() + " "},
	}
	for _, tc := range cases {
		if got := versionLine("v1.2.3", tc.info); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: %q, want it to start with %q", tc.name, got, tc.want)
		}
	}
}

func TestUnknownCommandOrFlagIsExit2WithOneLineNamingIt(t *testing.T) {
	cases := []struct {
		args []string
		name string
	}{
		{[]string{"srve"}, `"srve"`},
		{[]string{"nosuchcommand", "--help"}, `"nosuchcommand"`},
		{[]string{"--port", "1"}, "--port"},
		{[]string{"--bogus=1"}, "--bogus"},
		{[]string{"-p"}, "-p"},
		{[]string{"serve", "--port", "1"}, "--port"},
		{[]string{"serve", "extra"}, "extra"},
		{[]string{"version", "--short"}, "--short"},
		{[]string{"help", "srve"}, `"srve"`},
		{[]string{"help", "tail", "token"}, `"token"`},
		{[]string{"tail", "--bogus"}, "-bogus"},
		{[]string{"tail", "extra"}, `"extra"`},
		{[]string{"token", "--bogus"}, "-bogus"},
		{[]string{"publish", "--bogus"}, "-bogus"},
	}
	for _, tc := range cases {
		res := runCLI(t, nil, tc.args...)
		if res.code != 2 {
			t.Errorf("fanout %v: exit %d, want 2", tc.args, res.code)
		}
		if !oneLine(res.stderr) || !strings.Contains(res.stderr, tc.name) || !strings.Contains(res.stderr, "help") {
			t.Errorf("fanout %v: stderr %q, want one line naming %s and pointing at the help", tc.args, res.stderr, tc.name)
		}
		if res.stdout != "" {
			t.Errorf("fanout %v: stdout %q, want nothing", tc.args, res.stdout)
		}
	}
}

func TestDocsCommandsPageShowsEveryCommandsHelp(t *testing.T) {
	page, err := os.ReadFile("docs/commands.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range commands() {
		args := []string{c.name, "--help"}
		if c.name == "help" {
			args = args[:1]
		}
		res := runCLI(t, nil, args...)
		if !strings.Contains(string(page), "```\n"+res.stdout+"```\n") {
			t.Errorf("docs/commands.md lacks the output of fanout %s in a code block:\n%s", strings.Join(args, " "), res.stdout)
		}
	}
}
