// Command fanout-tail connects to a fanout daemon as one user and prints
// each event it receives on its own line: the terminal counterpart of the
// browser example in README.md.
//
//	go run ./cmd/fanout-tail -username test-user
//	FANOUT_TOKEN=eyJ… go run ./cmd/fanout-tail -url wss://events.example.com/ws
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("fanout-tail", flag.ContinueOnError)
	flags.SetOutput(stderr)
	server := flags.String("url", "ws://localhost:8084/ws", "the daemon's WebSocket URL")
	username := flags.String("username", "test-user", "whose events to receive (with -token: the token's user unless set)")
	token := flags.String("token", os.Getenv("FANOUT_TOKEN"), "JWT sent as Authorization: Bearer (default $FANOUT_TOKEN)")
	count := flags.Int("count", 0, "exit after this many events (0: run until interrupted)")
	timeout := flags.Duration("timeout", 0, "exit with status 1 when no event arrives for this long (0: wait forever)")
	if err := flags.Parse(args); err != nil {
		return 2
	}
	u, err := url.Parse(*server)
	if err != nil {
		fmt.Fprintf(stderr, "fanout-tail: -url: %v\n", err)
		return 2
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

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	conn, resp, err := websocket.DefaultDialer.DialContext(ctx, u.String(), header)
	if err != nil {
		if resp != nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			fmt.Fprintf(stderr, "fanout-tail: %s: HTTP %d: %s", u.Redacted(), resp.StatusCode, body)
		} else {
			fmt.Fprintf(stderr, "fanout-tail: %s: %v\n", u.Redacted(), err)
		}
		return 1
	}
	defer conn.Close()
	go func() {
		<-ctx.Done()
		_ = conn.WriteControl(websocket.CloseMessage,
			websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		_ = conn.Close()
	}()
	if q.Has("username") {
		fmt.Fprintf(stderr, "fanout-tail: connected to %s as %s\n", u.Host, *username)
	} else {
		fmt.Fprintf(stderr, "fanout-tail: connected to %s with a token\n", u.Host)
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
				fmt.Fprintf(stderr, "fanout-tail: closed by server: %d %s\n", closeErr.Code, closeErr.Text)
			default:
				fmt.Fprintf(stderr, "fanout-tail: %v\n", err)
			}
			return 1
		}
		fmt.Fprintf(stdout, "%s\n", data)
	}
	return 0
}
