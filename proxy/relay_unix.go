//go:build unix

package proxy

import (
	"io"
	"net"
	"os"
	"syscall"
)

// rawReader reads a socket through its syscall.RawConn. Its callbacks are
// bound once per connection, so a read allocates nothing.
type rawReader struct {
	rc syscall.RawConn

	p    []byte  // readNow's destination
	buf  *[]byte // readPooled's buffer, taken only while a read is tried
	n    int
	err  error
	peek [1]byte
	woke bool

	tryOnce   func(fd uintptr) bool
	tryPooled func(fd uintptr) bool
	tryPeek   func(fd uintptr) bool
}

func newRawReader(c net.Conn) *rawReader {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	r := &rawReader{rc: rc}
	r.tryOnce, r.tryPooled, r.tryPeek = r.readOnce, r.readIntoPooled, r.peekReadable
	return r
}

func (r *rawReader) readOnce(fd uintptr) bool {
	r.n, r.err = readFD(fd, r.p)
	return true
}

func (r *rawReader) readIntoPooled(fd uintptr) bool {
	r.buf = getBuf()
	r.n, r.err = readFD(fd, *r.buf)
	if r.err == syscall.EAGAIN {
		putBuf(r.buf)
		r.buf = nil
		return false
	}
	return true
}

func (r *rawReader) peekReadable(fd uintptr) bool {
	if r.woke {
		// The poller woke us: the next nonblocking read will tell.
		return true
	}
	r.woke = true
	_, _, err := syscall.Recvfrom(int(fd), r.peek[:], syscall.MSG_PEEK)
	return err != syscall.EAGAIN
}

// readNow makes one read attempt into p; it never waits.
func (r *rawReader) readNow(p []byte) (int, error) {
	r.p = p
	err := r.rc.Read(r.tryOnce)
	r.p = nil
	switch {
	case err != nil:
		return 0, err
	case r.err == syscall.EAGAIN:
		return 0, errWouldBlock
	case r.err != nil:
		return 0, os.NewSyscallError("read", r.err)
	case r.n == 0:
		return 0, io.EOF
	}
	return r.n, nil
}

// readPooled waits until the socket is readable, then takes a pooled
// buffer and reads into it. The buffer is held only while a read is being
// tried, never while waiting.
func (r *rawReader) readPooled() (*[]byte, int, error) {
	err := r.rc.Read(r.tryPooled)
	buf := r.buf
	r.buf = nil
	if err == nil && r.err != nil {
		err = os.NewSyscallError("read", r.err)
	}
	if err == nil && r.n == 0 {
		err = io.EOF
	}
	if err != nil {
		if buf != nil {
			putBuf(buf)
		}
		return nil, 0, err
	}
	return buf, r.n, nil
}

// waitReadable blocks until the socket has data (or EOF or an error) to
// read, without a buffer. It must only be called when crypto/tls holds no
// unread record, i.e. right after a read returned errWouldBlock. The first
// check is a real peek: the poller's readiness is reset when a wait
// starts, so data that arrived since the last read would otherwise go
// unnoticed.
func (r *rawReader) waitReadable() error {
	r.woke = false
	return r.rc.Read(r.tryPeek)
}

func readFD(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err != syscall.EINTR {
			return n, err
		}
	}
}
