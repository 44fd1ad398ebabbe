package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// handshakePKI is a CA with the proxy's server certificate on disk, and a
// second CA that the proxy does not trust.
type handshakePKI struct {
	ca, other *testpki.CA
	opts      *Options
}

func newHandshakePKI(t *testing.T) *handshakePKI {
	dir := t.TempDir()
	ca, err := testpki.NewCA("proxy clients")
	require.NoError(t, err)
	other, err := testpki.NewCA("someone else")
	require.NoError(t, err)
	server, err := ca.Server("nsqtls-proxy")
	require.NoError(t, err)
	opts := NewOptions()
	opts.TLSCert, opts.TLSKey, err = server.WriteFiles(dir, "server")
	require.NoError(t, err)
	opts.TLSRootCAFile = filepath.Join(dir, "ca.pem")
	require.NoError(t, os.WriteFile(opts.TLSRootCAFile, ca.CertPEM(), 0o600))
	return &handshakePKI{ca: ca, other: other, opts: opts}
}

// serverConfig is the proxy's own server config, from newTLSConfig.
func (p *handshakePKI) serverConfig(t *testing.T, minVersion string) *tls.Config {
	opts := *p.opts
	opts.TLSMinVersion = minVersion
	cfg, err := newTLSConfig(&opts)
	require.NoError(t, err)
	return cfg
}

// clientConfig trusts the proxy and always presents leaf, if any, even
// when it does not chain to a CA the server names.
func (p *handshakePKI) clientConfig(leaf *testpki.Leaf) *tls.Config {
	cfg := &tls.Config{RootCAs: p.ca.Pool(), ServerName: "localhost"}
	if leaf != nil {
		cert := leaf.TLSCertificate()
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &cert, nil
		}
	}
	return cfg
}

// handshake runs the server side of a handshake on loopback TCP against
// client, which drives the other end, and returns the server's error.
func handshake(t *testing.T, server *tls.Config, client func(net.Conn)) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	clientDone := make(chan struct{})
	go func() {
		defer close(clientDone)
		conn, err := net.Dial("tcp", ln.Addr().String())
		if !assert.NoError(t, err) {
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
		client(conn)
	}()
	raw, err := ln.Accept()
	require.NoError(t, err)
	defer raw.Close()
	require.NoError(t, raw.SetDeadline(time.Now().Add(5*time.Second)))
	tc := tls.Server(raw, server)
	err = tc.Handshake()
	tc.Close()
	<-clientDone
	return err
}

// tlsClient runs a crypto/tls client handshake and then reads until the
// server closes, so that a TLS 1.3 server can refuse the client's
// certificate after the client's side of the handshake is done.
func tlsClient(cfg *tls.Config) func(net.Conn) {
	return func(conn net.Conn) {
		tc := tls.Client(conn, cfg)
		if tc.Handshake() == nil {
			_, _ = io.Copy(io.Discard, tc)
		}
	}
}

func TestHandshakeReasons(t *testing.T) {
	p := newHandshakePKI(t)
	now := time.Now()
	issue := func(ca *testpki.CA, o testpki.LeafOptions) *testpki.Leaf {
		o.CommonName = "client"
		leaf, err := ca.Issue(o)
		require.NoError(t, err)
		return leaf
	}
	good := issue(p.ca, testpki.LeafOptions{})
	cases := []struct {
		name   string
		client func(net.Conn)
		want   Reason
	}{
		{"no client certificate", tlsClient(p.clientConfig(nil)), ReasonNoClientCert},
		{"certificate from another CA",
			tlsClient(p.clientConfig(issue(p.other, testpki.LeafOptions{}))),
			ReasonUnknownAuthority},
		{"self-signed CA certificate as client certificate", tlsClient(p.clientConfig(
			&testpki.Leaf{Cert: p.other.Cert, Key: p.other.Key})), ReasonUnknownAuthority},
		{"expired", tlsClient(p.clientConfig(issue(p.ca, testpki.LeafOptions{
			NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}))),
			ReasonExpired},
		{"not yet valid", tlsClient(p.clientConfig(issue(p.ca, testpki.LeafOptions{
			NotBefore: now.Add(time.Hour), NotAfter: now.Add(48 * time.Hour)}))),
			ReasonNotYetValid},
		{"serverAuth only", tlsClient(p.clientConfig(issue(p.ca, testpki.LeafOptions{
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}))),
			ReasonBadKeyUsage},
		// crypto/x509 checks the leaf's dates before it looks for a chain,
		// so a stranger's expired certificate is logged as expired.
		{"expired and from another CA", tlsClient(p.clientConfig(issue(p.other,
			testpki.LeafOptions{NotBefore: now.Add(-48 * time.Hour),
				NotAfter: now.Add(-time.Hour)}))), ReasonExpired},
		{"client does not trust the proxy", tlsClient(&tls.Config{
			RootCAs: p.other.Pool(), ServerName: "localhost",
			Certificates: []tls.Certificate{good.TLSCertificate()}}), ReasonClientAlert},
		{"plaintext NSQ command", func(c net.Conn) {
			_, _ = c.Write([]byte("PUB topic\n\x00\x00\x00\x01x"))
			_, _ = io.Copy(io.Discard, c)
		}, ReasonPlaintextRejected},
		{"NSQ magic instead of ClientHello", func(c net.Conn) {
			_, _ = c.Write([]byte(magicV2 + "IDENTIFY\n"))
			_, _ = io.Copy(io.Discard, c)
		}, ReasonPlaintextRejected},
		{"client closes at once", func(net.Conn) {}, ReasonClientClosed},
		{"client closes mid-record", func(c net.Conn) {
			_, _ = c.Write([]byte{0x16, 0x03, 0x01, 0x01, 0x00, 0x01})
		}, ReasonClientClosed},
	}
	for _, version := range []struct {
		name     string
		min, max uint16
	}{{"TLS 1.2", tls.VersionTLS12, tls.VersionTLS12}, {"TLS 1.3", tls.VersionTLS13, 0}} {
		t.Run(version.name, func(t *testing.T) {
			server := p.serverConfig(t, "tls1.2")
			server.MinVersion, server.MaxVersion = version.min, version.max

			t.Run("good client", func(t *testing.T) {
				var state tls.ConnectionState
				err := handshake(t, server, func(conn net.Conn) {
					tc := tls.Client(conn, p.clientConfig(good))
					if assert.NoError(t, tc.Handshake()) {
						state = tc.ConnectionState()
					}
				})
				require.NoError(t, err)
				assert.Equal(t, version.min, state.Version)
			})
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					err := handshake(t, server, tc.client)
					require.Error(t, err)
					assert.Equal(t, tc.want, handshakeReason(err, time.Now()),
						"server error %q (%T)", err, err)
				})
			}
		})
	}

	t.Run("TLS 1.2 client, TLS 1.3 server", func(t *testing.T) {
		cfg := p.clientConfig(good)
		cfg.MaxVersion = tls.VersionTLS12
		err := handshake(t, p.serverConfig(t, "tls1.3"), tlsClient(cfg))
		require.Error(t, err)
		assert.Equal(t, ReasonTLSVersion, handshakeReason(err, time.Now()),
			"server error %q", err)
	})
	t.Run("TLS 1.1 client, TLS 1.2 server", func(t *testing.T) {
		cfg := p.clientConfig(good)
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
		err := handshake(t, p.serverConfig(t, "tls1.2"), tlsClient(cfg))
		require.Error(t, err)
		assert.Equal(t, ReasonTLSVersion, handshakeReason(err, time.Now()),
			"server error %q", err)
	})
	t.Run("client sends nothing until the deadline", func(t *testing.T) {
		server := p.serverConfig(t, "tls1.2")
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer ln.Close()
		client, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		defer client.Close()
		raw, err := ln.Accept()
		require.NoError(t, err)
		defer raw.Close()
		require.NoError(t, raw.SetDeadline(time.Now().Add(50*time.Millisecond)))
		err = tls.Server(raw, server).Handshake()
		require.Error(t, err)
		assert.Equal(t, ReasonTimeout, handshakeReason(err, time.Now()), "%q", err)
	})
}

// TestHandshakeErrorTexts pins the crypto/tls texts handshakeReason
// matches by string, straight from the server's error.
func TestHandshakeErrorTexts(t *testing.T) {
	p := newHandshakePKI(t)
	good, err := p.ca.Client("client")
	require.NoError(t, err)
	for _, v := range []string{"tls1.2", "tls1.3"} {
		t.Run("no certificate "+v, func(t *testing.T) {
			cfg := p.clientConfig(nil)
			err := handshake(t, p.serverConfig(t, v), tlsClient(cfg))
			require.Error(t, err)
			assert.Contains(t, err.Error(), "didn't provide a certificate")
		})
	}
	cfg := p.clientConfig(good)
	cfg.MaxVersion = tls.VersionTLS12
	err = handshake(t, p.serverConfig(t, "tls1.3"), tlsClient(cfg))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "unsupported versions")
}

func TestCertReason(t *testing.T) {
	now := time.Now()
	past := &x509.Certificate{NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)}
	future := &x509.Certificate{NotBefore: now.Add(time.Hour), NotAfter: now.Add(2 * time.Hour)}
	valid := &x509.Certificate{NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)}
	invalid := func(r x509.InvalidReason) error {
		return x509.CertificateInvalidError{Reason: r}
	}
	cases := []struct {
		name  string
		err   error
		chain []*x509.Certificate
		want  Reason
	}{
		{"unknown authority", x509.UnknownAuthorityError{}, nil, ReasonUnknownAuthority},
		{"wrapped unknown authority", fmt.Errorf("x: %w", x509.UnknownAuthorityError{}), nil,
			ReasonUnknownAuthority},
		{"expired leaf", invalid(x509.Expired), []*x509.Certificate{past}, ReasonExpired},
		{"leaf not yet valid", invalid(x509.Expired), []*x509.Certificate{future},
			ReasonNotYetValid},
		{"intermediate not yet valid", invalid(x509.Expired),
			[]*x509.Certificate{valid, future}, ReasonNotYetValid},
		{"expired without a chain", invalid(x509.Expired), nil, ReasonExpired},
		{"incompatible usage", invalid(x509.IncompatibleUsage), nil, ReasonBadKeyUsage},
		{"not authorized to sign", invalid(x509.NotAuthorizedToSign), nil,
			ReasonBadCertificate},
		{"name constraints", invalid(x509.CANotAuthorizedForThisName), nil,
			ReasonBadCertificate},
		{"hostname error", x509.HostnameError{}, nil, ReasonBadCertificate},
		{"other error", errors.New("x509: something"), nil, ReasonBadCertificate},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, certReason(tc.err, tc.chain, now))
		})
	}
}

func TestHandshakeReasonErrors(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want Reason
	}{
		{"our own reason", fmt.Errorf("tls: %w",
			&reasonError{reason: ReasonExpired, err: errors.New("expired")}), ReasonExpired},
		{"verification error", &tls.CertificateVerificationError{
			Err: x509.UnknownAuthorityError{}}, ReasonUnknownAuthority},
		{"deadline", os.ErrDeadlineExceeded, ReasonTimeout},
		{"record header", tls.RecordHeaderError{Msg: "first record does not look like a TLS " +
			"handshake"}, ReasonPlaintextRejected},
		{"EOF", io.EOF, ReasonClientClosed},
		{"unexpected EOF", fmt.Errorf("read: %w", io.ErrUnexpectedEOF), ReasonClientClosed},
		{"closed", net.ErrClosed, ReasonClientClosed},
		{"no certificate", errors.New("tls: client didn't provide a certificate"),
			ReasonNoClientCert},
		{"versions", errors.New("tls: client offered only unsupported versions: [302]"),
			ReasonTLSVersion},
		{"client alert", errors.New("remote error: tls: bad certificate"), ReasonClientAlert},
		{"other", errors.New("tls: no cipher suite supported by both client and server"),
			ReasonHandshakeFailed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, handshakeReason(tc.err, time.Now()))
		})
	}
}
