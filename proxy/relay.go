package proxy

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// relayBufSize is one TLS record's worth of plaintext: each read from nsqd
// becomes at most one record to the client.
const relayBufSize = 16 << 10

// bufPool holds relay buffers. A connection takes one only while bytes are
// in flight and returns it before it waits for more, so idle connections
// hold none.
var bufPool = sync.Pool{New: func() any {
	b := make([]byte, relayBufSize)
	return &b
}}

// buffersOut counts relay buffers taken and not yet returned.
var buffersOut atomic.Int64

func getBuf() *[]byte {
	buffersOut.Add(1)
	return bufPool.Get().(*[]byte)
}

func putBuf(b *[]byte) {
	buffersOut.Add(-1)
	bufPool.Put(b)
}

// errWouldBlock is returned by a nonblocking nbConn read that found no
// data. crypto/tls treats a Temporary error from its transport as
// retryable and keeps the partial record it has read.
var errWouldBlock net.Error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "proxy: read would block" }
func (wouldBlock) Timeout() bool   { return false }
func (wouldBlock) Temporary() bool { return true }

// nbConn is the client's connection as crypto/tls sees it. While
// nonblocking is set (only by the goroutine that reads), a read that would
// have to wait returns errWouldBlock instead: the relay then puts its
// buffer back and waits for the socket without one.
type nbConn struct {
	net.Conn
	raw         *rawReader  // nil where the platform path is unavailable
	config      *tls.Config // this connection's handshake config
	nonblocking bool
}

func newNBConn(c net.Conn) *nbConn {
	return &nbConn{Conn: c, raw: newRawReader(c)}
}

func (c *nbConn) Read(p []byte) (int, error) {
	if !c.nonblocking || c.raw == nil {
		return c.Conn.Read(p)
	}
	return c.raw.readNow(p)
}

// pumpToUpstream copies the client's plaintext from tc to nsqd.
func pumpToUpstream(up net.Conn, tc *tls.Conn, nb *nbConn, count *atomic.Int64) Reason {
	if nb.raw == nil {
		return copyHoldingBuffer(up, tc, count, ReasonClientClosed, ReasonClientError,
			ReasonUpstreamError)
	}
	for {
		buf := getBuf()
		nb.nonblocking = true
		reason, idle := drainTLS(up, tc, *buf, count)
		nb.nonblocking = false
		putBuf(buf)
		if !idle {
			return reason
		}
		if err := nb.raw.waitReadable(); err != nil {
			return ReasonClientError
		}
	}
}

// drainTLS copies what tc can give without waiting. It reports idle when
// tc needs more bytes from the socket, and a Reason when the copy ended.
func drainTLS(up net.Conn, tc *tls.Conn, buf []byte, count *atomic.Int64) (Reason, bool) {
	for {
		n, err := tc.Read(buf)
		if n > 0 {
			if _, werr := up.Write(buf[:n]); werr != nil {
				return ReasonUpstreamError, false
			}
			count.Add(int64(n))
		}
		switch {
		case err == nil:
		case errors.Is(err, errWouldBlock):
			return "", true
		case errors.Is(err, io.EOF):
			return ReasonClientClosed, false
		default:
			return ReasonClientError, false
		}
	}
}

// pumpToClient copies nsqd's bytes to the client through tc. A write that
// the client does not take within writeTimeout (if positive) ends the
// connection, as nsqd itself drops a client that stops reading.
func pumpToClient(tc *tls.Conn, up net.Conn, count *atomic.Int64,
	writeTimeout time.Duration) Reason {
	w := io.Writer(tc)
	if writeTimeout > 0 {
		w = deadlineWriter{tc, writeTimeout}
	}
	raw := newRawReader(up)
	if raw == nil {
		return copyHoldingBuffer(w, up, count, ReasonUpstreamClosed, ReasonUpstreamError,
			ReasonClientError)
	}
	for {
		buf, n, err := raw.readPooled()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return ReasonUpstreamClosed
			}
			return ReasonUpstreamError
		}
		_, werr := w.Write((*buf)[:n])
		putBuf(buf)
		if werr != nil {
			return ReasonClientError
		}
		count.Add(int64(n))
	}
}

// deadlineWriter gives each write its own deadline.
type deadlineWriter struct {
	conn    net.Conn
	timeout time.Duration
}

func (w deadlineWriter) Write(p []byte) (int, error) {
	if err := w.conn.SetWriteDeadline(time.Now().Add(w.timeout)); err != nil {
		return 0, err
	}
	return w.conn.Write(p)
}

// copyHoldingBuffer is the portable relay: a pooled buffer held for the
// life of the copy.
func copyHoldingBuffer(dst io.Writer, src io.Reader, count *atomic.Int64,
	srcClosed, srcError, dstError Reason) Reason {
	buf := getBuf()
	defer putBuf(buf)
	for {
		n, err := src.Read(*buf)
		if n > 0 {
			if _, werr := dst.Write((*buf)[:n]); werr != nil {
				return dstError
			}
			count.Add(int64(n))
		}
		if errors.Is(err, io.EOF) {
			return srcClosed
		}
		if err != nil {
			return srcError
		}
	}
}
