package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// relayPair is a client talking TLS to a relay that forwards to a plain
// "upstream" socket, all on loopback.
type relayPair struct {
	client   *tls.Conn // the NSQ client's end
	upstream net.Conn  // nsqd's end
	done     chan struct{}
}

func newRelayPair(t testing.TB) *relayPair { return newRelayPairWith(t, true) }

// newRelayPairWith relays with the proxy's pumps, or, when pooled is
// false, with plain io.Copy in each direction as a baseline.
func newRelayPairWith(t testing.TB, pooled bool) *relayPair {
	ca, err := testpki.NewCA("relay test")
	require.NoError(t, err)
	server, err := ca.Server("relay")
	require.NoError(t, err)
	clientLeaf, err := ca.Client("client")
	require.NoError(t, err)

	clientSide, proxySide := tcpPair(t)
	proxyUp, upstreamSide := tcpPair(t)
	nb := newNBConn(proxySide)
	srv := tls.Server(nb, &tls.Config{
		Certificates: []tls.Certificate{server.TLSCertificate()},
		ClientAuth:   tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool(),
	})
	cli := tls.Client(clientSide, &tls.Config{
		RootCAs: ca.Pool(), ServerName: "localhost",
		Certificates: []tls.Certificate{clientLeaf.TLSCertificate()},
	})
	errs := make(chan error, 1)
	go func() { errs <- cli.Handshake() }()
	require.NoError(t, srv.Handshake())
	require.NoError(t, <-errs)

	p := &relayPair{client: cli, upstream: upstreamSide, done: make(chan struct{})}
	var from, to atomic.Int64
	go func() {
		defer close(p.done)
		up := make(chan struct{})
		go func() {
			if pooled {
				pumpToUpstream(proxyUp, srv, nb, &from)
			} else {
				_, _ = io.Copy(proxyUp, srv)
			}
			srv.Close()
			proxyUp.Close()
			close(up)
		}()
		if pooled {
			pumpToClient(srv, proxyUp, &to, time.Minute)
		} else {
			_, _ = io.Copy(srv, proxyUp)
		}
		srv.Close()
		proxyUp.Close()
		<-up
	}()
	t.Cleanup(func() {
		cli.Close()
		upstreamSide.Close()
		<-p.done
	})
	return p
}

func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	s := <-accepted
	require.NotNil(t, s)
	return c, s
}

// TestRelayIdleHoldsNoBuffer: connections that wait for data hold no relay
// buffer, in either direction; a buffer is taken only while bytes move.
func TestRelayIdleHoldsNoBuffer(t *testing.T) {
	base := buffersOut.Load()
	pairs := make([]*relayPair, 20)
	for i := range pairs {
		pairs[i] = newRelayPair(t)
	}
	for _, p := range pairs {
		roundTrip(t, p, []byte("RDY 1\n"), []byte("message"))
	}
	require.Eventually(t, func() bool { return buffersOut.Load() == base },
		2*time.Second, 5*time.Millisecond, "idle connections hold %d buffers",
		buffersOut.Load()-base)
}

// TestRelayBothWays moves data both ways, including records split across
// reads and writes bigger than a buffer, and checks half-close ends both
// directions.
func TestRelayBothWays(t *testing.T) {
	p := newRelayPair(t)
	big := make([]byte, 3*relayBufSize+123)
	for i := range big {
		big[i] = byte(i * 31)
	}
	roundTrip(t, p, big, big)
	roundTrip(t, p, []byte("x"), []byte("y"))

	require.NoError(t, p.upstream.Close())
	_ = p.client.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := p.client.Read(make([]byte, 1))
	assert.ErrorIs(t, err, io.EOF, "nsqd closing must close the client")
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		t.Fatal("relay goroutines did not end")
	}
}

func roundTrip(t testing.TB, p *relayPair, toUpstream, toClient []byte) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	deadline, _ := ctx.Deadline()
	_ = p.upstream.SetDeadline(deadline)
	_ = p.client.SetDeadline(deadline)

	go func() { _, _ = p.client.Write(toUpstream) }()
	got := make([]byte, len(toUpstream))
	_, err := io.ReadFull(p.upstream, got)
	require.NoError(t, err)
	require.Equal(t, toUpstream, got)

	go func() { _, _ = p.upstream.Write(toClient) }()
	got = make([]byte, len(toClient))
	_, err = io.ReadFull(p.client, got)
	require.NoError(t, err)
	require.Equal(t, toClient, got)
}

// BenchmarkRelay compares the proxy's relay with plain io.Copy over the
// same TLS connection: bulk in each direction, and a small request and
// answer as an NSQ consumer's FIN and next message make.
func BenchmarkRelay(b *testing.B) {
	for _, mode := range []struct {
		name   string
		pooled bool
	}{{"pooled", true}, {"iocopy", false}} {
		b.Run("to_client_64KiB/"+mode.name, func(b *testing.B) {
			p := newRelayPairWith(b, mode.pooled)
			benchStream(b, p.upstream, p.client, 64<<10)
		})
		b.Run("to_upstream_64KiB/"+mode.name, func(b *testing.B) {
			p := newRelayPairWith(b, mode.pooled)
			benchStream(b, p.client, p.upstream, 64<<10)
		})
		b.Run("ping_pong_100B/"+mode.name, func(b *testing.B) {
			p := newRelayPairWith(b, mode.pooled)
			msg := make([]byte, 100)
			b.SetBytes(int64(2 * len(msg)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				roundTrip(b, p, msg, msg)
			}
		})
	}
}

func benchStream(b *testing.B, w io.Writer, r io.Reader, chunk int) {
	data := make([]byte, chunk)
	b.SetBytes(int64(chunk))
	b.ReportAllocs()
	errs := make(chan error, 1)
	b.ResetTimer()
	go func() {
		for i := 0; i < b.N; i++ {
			if _, err := w.Write(data); err != nil {
				errs <- err
				return
			}
		}
		errs <- nil
	}()
	buf := make([]byte, chunk)
	for i := 0; i < b.N; i++ {
		if _, err := io.ReadFull(r, buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
}
