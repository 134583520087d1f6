//go:build !linux

package wsconn

import "syscall"

// lot is the parking lot; without epoll nothing parks, and an idle
// connection's read side waits in AwaitReadable.
var lot parkingLot

type parkingLot struct{}

func (*parkingLot) park(*batchConn) bool               { return false }
func (*parkingLot) forget(*batchConn) (wasParked bool) { return false }

func socketFD(syscall.RawConn) int32 { return -1 }
