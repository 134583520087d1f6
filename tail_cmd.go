package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

// The exit statuses of `fanout tail`.
const (
	// tailFailed: the connection was refused, dropped or timed out.
	tailFailed = 1
	// tailBadUsage: a flag or an argument is wrong; nothing was dialled.
	tailBadUsage = 2
)

const tailUsage = `usage: fanout tail [--url URL] [--username NAME] [--token JWT] [--count N] [--timeout DURATION]

Connects to a fanout daemon as one user and prints each event it receives
on its own line: the terminal counterpart of the browser example in
README.md. Flags take one dash or two (-count 1, --count 1).

  --url URL          the daemon's WebSocket URL (default ws://localhost:8084/ws)
  --username NAME    whose events to receive (default test-user; with a
                     token: the token's user unless set)
  --token JWT        sent as Authorization: Bearer (default $FANOUT_TOKEN;
                     fanout token mints one)
  --count N          exit after N events (default 0: run until interrupted)
  --timeout DURATION exit with status 1 when no event arrives for this long
                     (default 0: wait forever)

Exit status: 0 after --count events or an interrupt; 1 when the daemon
refuses the connection (its reason is printed), closes it, or --timeout
passes; 2 for bad usage.
`

// runTail runs `fanout tail` with the arguments that follow "tail" and
// returns the exit status. Events go to stdout, one line each; the
// connection's state and errors go to stderr, one line each. It stops at
// SIGINT or SIGTERM.
func runTail(ctx context.Context, args []string, lookupEnv func(string) (string, bool), _ io.Reader, stdout, stderr io.Writer) int {
	fail := func(status int, format string, a ...any) int {
		fmt.Fprintf(stderr, "fanout tail: "+format+"\n", a...)
		return status
	}
	flags := flag.NewFlagSet("fanout tail", flag.ContinueOnError)
	// The flag package's own message is several lines with the usage;
	// ours is the one line naming the problem.
	flags.SetOutput(io.Discard)
	server := flags.String("url", "ws://localhost:8084/ws", "")
	username := flags.String("username", "test-user", "")
	envToken, _ := lookupEnv("FANOUT_TOKEN")
	token := flags.String("token", envToken, "")
	count := flags.Int("count", 0, "")
	timeout := flags.Duration("timeout", 0, "")
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, tailUsage)
			return 0
		}
		return fail(tailBadUsage, "%v (see fanout tail --help)", err)
	}
	if flags.NArg() > 0 {
		return fail(tailBadUsage, "unexpected argument %q: every setting is a flag (see fanout tail --help)", flags.Arg(0))
	}
	if *count < 0 || *timeout < 0 {
		return fail(tailBadUsage, "--count and --timeout must not be negative")
	}
	u, err := url.Parse(*server)
	if err != nil {
		return fail(tailBadUsage, "--url: %v", err)
	}
	usernameSet := false
	flags.Visit(func(f *flag.Flag) { usernameSet = usernameSet || f.Name == "username" })
	q := u.Query()
	if *token == "" || usernameSet {
		q.Set("username", *username)
	}
	u.RawQuery = q.Encode()
	header := http.Header{}
	if *token != "" {
		header.Set("Authorization", "Bearer "+*token)
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	conn, resp, err := websocket.DefaultDialer.DialContext(ctx, u.String(), header)
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			return fail(tailFailed, "%s: HTTP %d: %s", u.Redacted(), resp.StatusCode, strings.Join(strings.Fields(string(body)), " "))
		}
		return fail(tailFailed, "%s: %v", u.Redacted(), err)
	}
	defer conn.Close()
	closed := make(chan struct{})
	defer close(closed)
	go func() {
		select {
		case <-ctx.Done():
		case <-closed:
			return
		}
		_ = conn.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		_ = conn.Close()
	}()
	if q.Has("username") {
		fmt.Fprintf(stderr, "fanout tail: connected to %s as %s\n", u.Host, *username)
	} else {
		fmt.Fprintf(stderr, "fanout tail: connected to %s with a token\n", u.Host)
	}

	for n := 0; *count == 0 || n < *count; n++ {
		if *timeout > 0 {
			_ = conn.SetReadDeadline(time.Now().Add(*timeout))
		}
		_, data, err := conn.ReadMessage()
		if err != nil {
			var closeErr *websocket.CloseError
			switch {
			case ctx.Err() != nil:
				return 0
			case errors.As(err, &closeErr):
				return fail(tailFailed, "closed by server: %d %s", closeErr.Code, closeErr.Text)
			default:
				return fail(tailFailed, "%v", err)
			}
		}
		fmt.Fprintf(stdout, "%s\n", data)
	}
	return 0
}
