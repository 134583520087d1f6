package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
)

// listenFDsStart is the first descriptor systemd passes (SD_LISTEN_FDS_START).
const listenFDsStart = 3

// listen returns the daemon's public listener. Under systemd socket
// activation (LISTEN_PID is this process, LISTEN_FDS is 1) it is the
// socket systemd holds: the socket outlives the process, so during a
// restart connections wait in its backlog for the new process instead of
// being refused (docs/deployment.md, "Restarting on one host"). Otherwise
// it listens on addr.
func listen(addr string, lookupEnv func(string) (string, bool)) (ln net.Listener, activated bool, err error) {
	pid, _ := lookupEnv("LISTEN_PID")
	fds, _ := lookupEnv("LISTEN_FDS")
	if pid == "" || fds == "" || pid != strconv.Itoa(os.Getpid()) {
		// No TCP keep-alive on accepted connections: WebSocket pings
		// (PING_INTERVAL) find dead peers, the HTTP server's IdleTimeout
		// ends idle HTTP connections, and the four setsockopt calls per
		// accept were 5 % of the daemon's CPU while connections poured in.
		ln, err = (&net.ListenConfig{KeepAlive: -1}).Listen(context.Background(), "tcp", addr)
		return ln, false, err
	}
	if fds != "1" {
		return nil, true, fmt.Errorf("socket activation: LISTEN_FDS=%q: want exactly one socket (the public port)", fds)
	}
	// The variables are for this process only, not for its children.
	for _, name := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		_ = os.Unsetenv(name)
	}
	f := os.NewFile(listenFDsStart, "LISTEN_FDS")
	if f == nil {
		return nil, true, errors.New("socket activation: descriptor 3 is not open")
	}
	// FileListener duplicates the descriptor: closing ours leaves the
	// socket to the listener (and to systemd, which holds it too).
	ln, err = net.FileListener(f)
	_ = f.Close()
	if err != nil {
		return nil, true, fmt.Errorf("socket activation: descriptor 3: %w", err)
	}
	return ln, true, nil
}
