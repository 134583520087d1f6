package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// usageError is the exit status of a command line that is wrong (an
// unknown command or flag, a missing argument): nothing was done.
const usageError = 2

// commandFunc runs one subcommand with the arguments that follow its name
// and returns the process's exit status. Messages go to stderr, one line
// each; what the command produces goes to stdout.
type commandFunc func(ctx context.Context, args []string, lookupEnv func(string) (string, bool), stdin io.Reader, stdout, stderr io.Writer) int

// command is one row of the command table: `fanout help` is generated
// from it.
type command struct {
	name string
	// summary is the command's line in `fanout help`.
	summary string
	run     commandFunc
}

// commands is the command table, in the order `fanout help` lists it. It
// is a function rather than a variable because help reads the table.
func commands() []command {
	return []command{
		{"serve", "run the daemon (what fanout with no command does)", runServeCommand},
		{"tail", "connect to a daemon as one user and print each event on its own line", runTail},
		{"publish", "publish events that are kept in the history, from a shell", runPublish},
		{"presence", "print whether users are connected to any instance, from Redis", runPresence},
		{"seen", "print the last event id each user acknowledged (read receipts), from Redis", runSeen},
		{"token", "mint a test token signed with JWT_SECRET, which the daemon accepts", runToken},
		{"version", "print the version, the commit and the Go version", runVersion},
		{"help", "print this help, or a command's (fanout help COMMAND)", runHelp},
	}
}

// lookupCommand returns the command called name.
func lookupCommand(name string) (command, bool) {
	for _, c := range commands() {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// isHelpFlag reports whether arg asks for help.
func isHelpFlag(arg string) bool {
	return arg == "-h" || arg == "--help" || arg == "-help"
}

// runCommand runs the command line args (without the program name) and
// returns the exit status. No arguments runs the daemon, as `fanout serve`.
func runCommand(ctx context.Context, args []string, lookupEnv func(string) (string, bool), stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		return runServeCommand(ctx, nil, lookupEnv, stdin, stdout, stderr)
	}
	name, rest := args[0], args[1:]
	switch {
	case isHelpFlag(name):
		name = "help"
	case name == "--version" || name == "-version":
		name = "version"
	case strings.HasPrefix(name, "-"):
		flagName, _, _ := strings.Cut(name, "=")
		fmt.Fprintf(stderr, "fanout: unknown flag %s (fanout takes a command first; see fanout help)\n", flagName)
		return usageError
	}
	c, ok := lookupCommand(name)
	if !ok {
		fmt.Fprintf(stderr, "fanout: unknown command %q (see fanout help)\n", name)
		return usageError
	}
	return c.run(ctx, rest, lookupEnv, stdin, stdout, stderr)
}

// runHelp prints the usage of fanout, or with a command name that
// command's usage (as COMMAND --help does).
func runHelp(ctx context.Context, args []string, lookupEnv func(string) (string, bool), stdin io.Reader, stdout, stderr io.Writer) int {
	switch {
	case len(args) == 1 && !strings.HasPrefix(args[0], "-") && args[0] != "help":
		c, ok := lookupCommand(args[0])
		if !ok {
			fmt.Fprintf(stderr, "fanout help: unknown command %q (see fanout help)\n", args[0])
			return usageError
		}
		return c.run(ctx, []string{"--help"}, lookupEnv, stdin, stdout, stderr)
	case len(args) > 1 || (len(args) == 1 && args[0] != "help" && !isHelpFlag(args[0])):
		fmt.Fprintf(stderr, "fanout help: unexpected argument %q; give one command name, as in fanout help tail\n", args[len(args)-1])
		return usageError
	}
	var b strings.Builder
	b.WriteString("usage: fanout [COMMAND] [FLAGS]\n\n")
	b.WriteString("fanout holds browsers' WebSocket and Server-Sent Events connections and pushes\n")
	b.WriteString("to each user the events published in Redis on workflow:events:{username}.\n\n")
	b.WriteString("Commands:\n")
	width := 0
	for _, c := range commands() {
		width = max(width, len(c.name))
	}
	for _, c := range commands() {
		fmt.Fprintf(&b, "  %-*s  %s\n", width, c.name, c.summary)
	}
	b.WriteString("\nfanout COMMAND --help prints a command's flags (docs/commands.md has them all).\n")
	b.WriteString("The daemon and the commands that reach Redis are configured with environment\n")
	b.WriteString("variables (REDIS_HOST, PORT, JWT_SECRET, …): the table is in README.md,\n")
	b.WriteString("section \"Configuration\".\n")
	fmt.Fprint(stdout, b.String())
	return 0
}

const serveUsage = `usage: fanout [serve]

Runs the daemon until SIGINT or SIGTERM, then shuts down gracefully. It
takes no flags: it is configured with environment variables, listed in
README.md, section "Configuration".

Exit status: 0 after a graceful shutdown; 1 when it cannot listen or stops
with an error; 2 for a bad configuration (one line on stderr naming the
variable).
`

// runServeCommand runs `fanout serve`: the daemon, which takes no
// arguments.
func runServeCommand(_ context.Context, args []string, _ func(string) (string, bool), _ io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		if isHelpFlag(args[0]) {
			fmt.Fprint(stdout, serveUsage)
			return 0
		}
		what := "argument"
		if strings.HasPrefix(args[0], "-") {
			what = "flag"
		}
		name, _, _ := strings.Cut(args[0], "=")
		fmt.Fprintf(stderr, "fanout serve: unknown %s %s: the daemon is configured with environment variables (see fanout help)\n", what, name)
		return usageError
	}
	runServe()
	return 0
}

const versionUsage = `usage: fanout version

Prints the version (set at build time with -ldflags "-X main.version=…"),
the commit it was built from (with -dirty when the tree had changes;
unknown when the build recorded none) and the Go version.
`

// runVersion prints the version line of this binary.
func runVersion(_ context.Context, args []string, _ func(string) (string, bool), _ io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		if isHelpFlag(args[0]) {
			fmt.Fprint(stdout, versionUsage)
			return 0
		}
		fmt.Fprintf(stderr, "fanout version: unexpected argument %s (see fanout version --help)\n", args[0])
		return usageError
	}
	info, _ := debug.ReadBuildInfo()
	fmt.Fprintln(stdout, versionLine(version, info))
	return 0
}

// versionLine says which fanout this is: its version, the commit it was
// built from and the Go that built it. info may be nil.
func versionLine(version string, info *debug.BuildInfo) string {
	commit, dirty := "unknown", false
	goVersion := runtime.Version()
	if info != nil {
		if info.GoVersion != "" {
			goVersion = info.GoVersion
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if dirty && commit != "unknown" {
		commit += "-dirty"
	}
	return fmt.Sprintf("fanout %s, commit %s, %s %s/%s", version, commit, goVersion, runtime.GOOS, runtime.GOARCH)
}
