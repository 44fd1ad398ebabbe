package proxy_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
	"github.com/nsqtls/nsqtls-proxy/proxy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRefusedClients checks every way a client can be turned away: the
// client sees an error, the audit log says why, and nsqd never hears of it.
func TestRefusedClients(t *testing.T) {
	e := newEnv(t, envConfig{})
	otherCA, err := testpki.NewCA("other root")
	require.NoError(t, err)
	issue := func(ca *testpki.CA, o testpki.LeafOptions) *tls.Config {
		leaf, err := ca.Issue(o)
		require.NoError(t, err)
		return alwaysPresent(clientTLS(e.ca, leaf))
	}
	now := time.Now()

	cases := []struct {
		name       string
		tls        *tls.Config // nil: plaintext go-nsq client
		reason     string
		clientErr  []string // the client's error contains one of these
		presentsCN string   // the CN the audit line names, if any
	}{
		{"no certificate", clientTLS(e.ca, nil), "no_client_cert",
			[]string{"certificate required", "bad certificate", "handshake failure"}, ""},
		{"wrong CA", issue(otherCA, testpki.LeafOptions{CommonName: "intruder"}),
			"unknown_authority", []string{"unknown certificate authority", "bad certificate"},
			"intruder"},
		{"expired", issue(e.ca, testpki.LeafOptions{CommonName: "old",
			NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-time.Hour)}),
			"expired", []string{"expired certificate", "bad certificate"}, "old"},
		{"not yet valid", issue(e.ca, testpki.LeafOptions{CommonName: "future",
			NotBefore: now.Add(time.Hour), NotAfter: now.Add(48 * time.Hour)}),
			"not_yet_valid", []string{"expired certificate", "bad certificate"}, "future"},
		{"serverAuth only", issue(e.ca, testpki.LeafOptions{CommonName: "server-ish",
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}),
			"bad_key_usage", []string{"bad certificate", "unsupported certificate"}, "server-ish"},
		{"no EKU at all", issue(e.ca, testpki.LeafOptions{CommonName: "no-eku",
			ExtKeyUsage: []x509.ExtKeyUsage{}}),
			"bad_key_usage", []string{"bad certificate"}, "no-eku"},
		{"plaintext IDENTIFY", nil, "plaintext_rejected",
			[]string{"E_IDENTIFY_FAILED IDENTIFY without TLS refused"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := e.sub(t)
			before := e.nsqdConnections()
			cfg := nsqConfig(tc.tls)
			cfg.TlsV1 = tc.tls != nil
			producer, err := nsq.NewProducer(e.addr, cfg)
			require.NoError(t, err)
			producer.SetLoggerLevel(nsq.LogLevelError)
			err = producer.Publish("refused", []byte("must not arrive"))
			producer.Stop()

			require.Error(t, err)
			assert.True(t, containsAny(err.Error(), tc.clientErr...),
				"client error %q names none of %q", err, tc.clientErr)
			want := map[string]any{"event": "handshake", "outcome": "failed", "reason": tc.reason}
			if tc.presentsCN != "" {
				want["client_cn"] = tc.presentsCN
			}
			e.waitAudit(want)
			e.assertNsqdUntouched(before)
		})
	}
}

// TestRefusedOpenings drives the plaintext opening by hand: each bad
// opening gets an NSQ error frame naming the problem, then a close.
func TestRefusedOpenings(t *testing.T) {
	e := newEnv(t, envConfig{})
	cases := []struct {
		name   string
		send   []byte
		code   string
		reason string
	}{
		{"command before IDENTIFY", []byte("  V2PUB refused\n\x00\x00\x00\x01x"),
			"E_INVALID cannot PUB before IDENTIFY", "plaintext_rejected"},
		{"V1 magic", []byte("  V1SUB a b\n"), "E_BAD_PROTOCOL protocol V1", "bad_protocol"},
		{"HTTP request", []byte("GET /stats HTTP/1.1\r\nHost: x\r\n\r\n"),
			"E_BAD_PROTOCOL HTTP request", "bad_protocol"},
		{"oversized IDENTIFY", append([]byte("  V2IDENTIFY\n"), 0x00, 0x50, 0x00, 0x00),
			"E_BAD_BODY IDENTIFY body too big", "bad_protocol"},
		{"malformed JSON", rawIdentify([]byte(`{"tls_v1": tru`)),
			"E_BAD_BODY IDENTIFY failed to decode JSON", "bad_protocol"},
		{"no feature negotiation", rawIdentify([]byte(`{"tls_v1": true}`)),
			"E_IDENTIFY_FAILED", "plaintext_rejected"},
		{"garbage", []byte("\x00\xffgarbage\n"), "E_BAD_PROTOCOL bad protocol magic", "bad_protocol"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := e.sub(t)
			before := e.nsqdConnections()
			conn, err := net.Dial("tcp", e.addr)
			require.NoError(t, err)
			defer conn.Close()
			require.NoError(t, conn.SetDeadline(time.Now().Add(5*time.Second)))
			_, err = conn.Write(tc.send)
			require.NoError(t, err)

			frameType, data := readTestFrame(t, conn)
			assert.Equal(t, int32(1), frameType, "want an error frame, got %q", data)
			assert.True(t, strings.HasPrefix(string(data), tc.code), "error frame %q", data)
			assert.Contains(t, string(data), "client certificate")
			_, err = conn.Read(make([]byte, 1))
			assert.ErrorIs(t, err, io.EOF, "the proxy must close after the error frame")

			e.waitAudit(map[string]any{"event": "handshake", "outcome": "failed",
				"reason": tc.reason, "remote_addr": conn.LocalAddr().String()})
			e.assertNsqdUntouched(before)
		})
	}
}

// TestPlaintextAfterIdentify sends a valid IDENTIFY and then, instead of a
// TLS ClientHello, a plaintext command: it must not reach nsqd.
func TestPlaintextAfterIdentify(t *testing.T) {
	e := newEnv(t, envConfig{})
	before := e.nsqdConnections()
	conn, err := net.Dial("tcp", e.addr)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(5*time.Second)))
	_, err = conn.Write(rawIdentify([]byte(`{"feature_negotiation":true,"tls_v1":true}`)))
	require.NoError(t, err)
	frameType, data := readTestFrame(t, conn)
	require.Equal(t, int32(0), frameType, "%s", data)
	assert.Contains(t, string(data), `"tls_v1":true`)

	_, err = conn.Write([]byte("PUB sneaky\n\x00\x00\x00\x05hello"))
	require.NoError(t, err)
	frameType, data = readTestFrame(t, conn)
	assert.Equal(t, int32(1), frameType)
	assert.Contains(t, string(data), "E_BAD_PROTOCOL expected a TLS handshake")
	_, err = io.ReadAll(conn)
	assert.NoError(t, err, "the proxy closes the connection")
	e.waitAudit(map[string]any{"event": "handshake", "outcome": "failed",
		"reason": "plaintext_rejected", "remote_addr": conn.LocalAddr().String()})
	e.assertNsqdUntouched(before)
}

// alwaysPresent makes the client send its certificate even when it does
// not chain to a CA the server asks for, as Go's client otherwise would not.
func alwaysPresent(cfg *tls.Config) *tls.Config {
	cert := cfg.Certificates[0]
	cfg.Certificates = nil
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &cert, nil
	}
	return cfg
}

func rawIdentify(body []byte) []byte {
	out := []byte("  V2IDENTIFY\n")
	out = binary.BigEndian.AppendUint32(out, uint32(len(body)))
	return append(out, body...)
}

func readTestFrame(t *testing.T, r io.Reader) (int32, []byte) {
	t.Helper()
	var hdr [8]byte
	_, err := io.ReadFull(r, hdr[:])
	require.NoError(t, err)
	size := binary.BigEndian.Uint32(hdr[:4])
	require.Less(t, size, uint32(1<<16))
	data := make([]byte, size-4)
	_, err = io.ReadFull(r, data)
	require.NoError(t, err)
	return int32(binary.BigEndian.Uint32(hdr[4:])), data
}

// nsqdConnections counts the TCP connections nsqd has logged so far.
func (e *env) nsqdConnections() int {
	return strings.Count(e.nsqd.Log(), "TCP: new client(")
}

// assertNsqdUntouched checks that nsqd saw no new connection since
// before, and that /stats lists no client.
func (e *env) assertNsqdUntouched(before int) {
	e.t.Helper()
	// Give a connection that should not exist time to show up.
	time.Sleep(100 * time.Millisecond)
	assert.Equal(e.t, before, e.nsqdConnections(), "nsqd saw a connection:\n%s", e.nsqd.Log())
	assert.Empty(e.t, e.nsqdClients(), "nsqd /stats lists a client")
}

// TestOpeningTimeout: a client that stalls before IDENTIFY or before its
// TLS handshake is cut off at the handshake deadline.
func TestOpeningTimeout(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *proxy.Options) {
		o.TLSHandshakeTimeout = 300 * time.Millisecond
	}})
	for _, tc := range []struct {
		name string
		send []byte
	}{
		{"silent", nil},
		{"half a magic", []byte(" ")},
		{"no ClientHello", rawIdentify([]byte(`{"feature_negotiation":true,"tls_v1":true}`))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := e.sub(t)
			conn, err := net.Dial("tcp", e.addr)
			require.NoError(t, err)
			defer conn.Close()
			_, err = conn.Write(tc.send)
			require.NoError(t, err)
			require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
			_, err = io.ReadAll(conn)
			require.NoError(t, err, "the proxy must close the stalled connection")
			e.waitAudit(map[string]any{"event": "handshake", "outcome": "failed",
				"reason": "timeout", "remote_addr": conn.LocalAddr().String()})
		})
	}
}

// TestAuditFailureRefuses: a client whose audit line cannot be written is
// not admitted.
func TestAuditFailureRefuses(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *proxy.Options) { o.AuditLog = "/dev/full" }})
	producer, err := nsq.NewProducer(e.addr, nsqConfig(e.client("unaudited")))
	require.NoError(t, err)
	producer.SetLoggerLevel(nsq.LogLevelError)
	err = producer.Publish("unaudited", []byte("must not arrive"))
	producer.Stop()
	require.Error(t, err)
	assert.Empty(t, e.nsqdClients(), "nsqd /stats lists a client")
}
