//go:build unix

package proxy

import (
	"io"
	"net"
	"os"
	"syscall"
)

func rawConnOf(c net.Conn) syscall.RawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// readNow makes one read attempt; it never waits.
func readNow(rc syscall.RawConn, p []byte) (int, error) {
	var n int
	var rerr error
	err := rc.Read(func(fd uintptr) bool {
		n, rerr = ignoringEINTR(func() (int, error) { return syscall.Read(int(fd), p) })
		return true
	})
	switch {
	case err != nil:
		return 0, err
	case rerr == syscall.EAGAIN:
		return 0, errWouldBlock
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// readPooled waits until the socket is readable, then takes a pooled
// buffer and reads into it. The buffer is held only while a read is being
// tried, never while waiting.
func readPooled(rc syscall.RawConn) (*[]byte, int, error) {
	var buf *[]byte
	var n int
	var rerr error
	err := rc.Read(func(fd uintptr) bool {
		buf = getBuf()
		n, rerr = ignoringEINTR(func() (int, error) { return syscall.Read(int(fd), *buf) })
		if rerr == syscall.EAGAIN {
			putBuf(buf)
			buf = nil
			return false
		}
		return true
	})
	if err == nil && rerr != nil {
		err = os.NewSyscallError("read", rerr)
	}
	if err == nil && n == 0 {
		err = io.EOF
	}
	if err != nil {
		if buf != nil {
			putBuf(buf)
		}
		return nil, 0, err
	}
	return buf, n, nil
}

// waitReadable blocks until the socket has data (or EOF or an error) to
// read, without a buffer. It must only be called when crypto/tls holds no
// unread record, i.e. right after a read returned errWouldBlock.
func waitReadable(rc syscall.RawConn) error {
	var peek [1]byte
	first := true
	return rc.Read(func(fd uintptr) bool {
		if !first {
			// The poller woke us: the next nonblocking read will tell.
			return true
		}
		first = false
		_, _, err := syscall.Recvfrom(int(fd), peek[:], syscall.MSG_PEEK)
		return err != syscall.EAGAIN
	})
}

func ignoringEINTR(read func() (int, error)) (int, error) {
	for {
		n, err := read()
		if err != syscall.EINTR {
			return n, err
		}
	}
}
