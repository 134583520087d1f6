package wsconn

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"time"
)

// Parking: an idle connection's read side without a goroutine
//
// A goroutine waiting for an idle socket costs its 2 KiB stack, its
// descriptor, and as much again of the heap's headroom (the GC's goal grows
// with the stacks). Park instead hands the socket to the parking lot: an
// epoll instance of our own, in which each parked socket is armed once
// (EPOLLONESHOT), and one goroutine, run, that waits for it through Go's
// netpoller. When a parked socket becomes readable, its read deadline
// passes, or it is closed, the read side is resumed on a new goroutine.
//
// A connection's parking state (batchConn's fd, registered, parked, closed,
// resume) is guarded by lot.mu, so that exactly one of the three wakes a
// parked read side:
//
//	running → parked    Park, by the read side, which then returns
//	parked → running    run, for an event or a passed read deadline (sweep),
//	                    or Close; whoever moves it starts resume
//	any → closed        Close, which takes the socket out of the epoll set
//	                    before the descriptor is closed, so that an fd number
//	                    in the set always names the connection in lot.conns
//
// Go's netpoller keeps its own registration of the socket; the two do not
// interfere (both are only told when the socket is readable).
var lot parkingLot

// sweepEvery is how often run looks for parked connections whose read
// deadline has passed: how late, at most, an expired pong wait is noticed.
const sweepEvery = 100 * time.Millisecond

// parkingLot is the epoll instance of the parked connections and the
// goroutine that waits on it. run runs while any connection is registered
// and returns when the last one is closed; Park starts it again.
type parkingLot struct {
	once sync.Once
	// epfd is the epoll instance, and file the same descriptor in Go's
	// netpoller (through raw), so that run waits without holding a thread;
	// nil when the instance could not be made, and nothing parks.
	epfd int
	file *os.File
	raw  syscall.RawConn

	// mu guards everything below and every batchConn's parking state.
	mu sync.Mutex
	// conns are the registered connections by descriptor.
	conns []*batchConn
	// registered counts them; running is set while run runs.
	registered int
	running    bool
}

// init makes the epoll instance on first use.
func (l *parkingLot) init() {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return
	}
	if err := syscall.SetNonblock(epfd, true); err != nil {
		_ = syscall.Close(epfd)
		return
	}
	file := os.NewFile(uintptr(epfd), "wsconn-epoll")
	raw, err := file.SyscallConn()
	if err == nil {
		// Only a descriptor in Go's netpoller takes a deadline.
		err = file.SetReadDeadline(time.Time{})
	}
	if err != nil {
		_ = file.Close()
		return
	}
	l.epfd, l.file, l.raw = epfd, file, raw
}

// park registers b's socket for one readiness event and marks it parked
// with resume to be started on a new goroutine. It reports false when b
// cannot park (no epoll instance, or b is closed); the caller then waits
// for the socket itself.
func (l *parkingLot) park(b *batchConn) bool {
	l.once.Do(l.init)
	if l.file == nil || b.fd < 0 {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if b.closed {
		return false
	}
	op := syscall.EPOLL_CTL_MOD
	if !b.registered {
		op = syscall.EPOLL_CTL_ADD
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT, Fd: b.fd}
	if err := syscall.EpollCtl(l.epfd, op, int(b.fd), &ev); err != nil {
		return false
	}
	if !b.registered {
		b.registered = true
		for int(b.fd) >= len(l.conns) {
			l.conns = append(l.conns[:cap(l.conns)], nil)
		}
		l.conns[b.fd] = b
		l.registered++
	}
	b.parked = true
	if !l.running {
		l.running = true
		go l.run()
	}
	return true
}

// forget takes b out of the epoll set for good, before its socket is
// closed, and reports whether its read side was parked: the caller then
// resumes it, once the socket is closed.
func (l *parkingLot) forget(b *batchConn) (wasParked bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b.closed = true
	wasParked, b.parked = b.parked, false
	if !b.registered {
		return wasParked
	}
	_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, int(b.fd), nil)
	b.registered = false
	l.conns[b.fd] = nil
	if l.registered--; l.registered == 0 {
		// Wake run so that it returns now rather than at its next sweep.
		_ = l.file.SetReadDeadline(time.Unix(1, 0))
	}
	return wasParked
}

// run waits for readiness events and resumes the parked read sides they
// name, and every sweepEvery resumes those whose read deadline has passed
// (their next read fails with it). It returns when no connection is
// registered.
func (l *parkingLot) run() {
	events := make([]syscall.EpollEvent, 128)
	var wake []*batchConn
	nextSweep := time.Now().Add(sweepEvery)
	for {
		_ = l.file.SetReadDeadline(nextSweep)
		n := 0
		err := l.raw.Read(func(fd uintptr) bool {
			var werr error
			n, werr = syscall.EpollWait(int(fd), events, 0)
			if werr != nil {
				n = 0
			}
			return n > 0
		})
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			n = 0 // not expected of an epoll descriptor; the sweep goes on
		}
		now := time.Now()
		l.mu.Lock()
		for _, ev := range events[:n] {
			if b := l.conns[ev.Fd]; b != nil && b.parked {
				b.parked = false
				wake = append(wake, b)
			}
		}
		if !now.Before(nextSweep) {
			nextSweep = now.Add(sweepEvery)
			for _, b := range l.conns {
				if b != nil && b.parked && b.expired(now) {
					b.parked = false
					wake = append(wake, b)
				}
			}
		}
		stop := l.registered == 0
		if stop {
			l.running = false
			l.conns = nil
		}
		l.mu.Unlock()
		for i, b := range wake {
			go b.resume()
			wake[i] = nil
		}
		wake = wake[:0]
		if stop {
			return
		}
	}
}

// socketFD is the descriptor of a socket, for the parking lot; -1 when it
// has none.
func socketFD(raw syscall.RawConn) int32 {
	fd := int32(-1)
	if raw != nil {
		_ = raw.Control(func(s uintptr) { fd = int32(s) })
	}
	return fd
}
