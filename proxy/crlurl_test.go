package proxy_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
	"github.com/nsqtls/nsqtls-proxy/proxy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

// crlServer serves the CRL file that openssl writes, over HTTP.
type crlServer struct {
	*httptest.Server
	down  atomic.Bool
	hits  atomic.Int64
	ce    *crlEnv
	fresh time.Duration
}

func (s *crlServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.hits.Add(1)
	if s.down.Load() {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	http.ServeFile(w, r, s.ce.crlPath)
}

// newCRLURLEnv serves an openssl CRL over HTTP; configure sets the proxy
// up to use it, given its URL.
func newCRLURLEnv(t *testing.T, configure func(o *proxy.Options, url string)) (*crlEnv,
	*crlServer) {
	ce := &crlEnv{}
	srv := &crlServer{ce: ce}
	srv.Server = httptest.NewServer(srv)
	t.Cleanup(srv.Close)
	ce.env = newEnv(t, envConfig{setup: func(e *env, o *proxy.Options) {
		var err error
		ce.ossl, err = e.ca.OpenSSL(e.dir + "/openssl-ca")
		require.NoError(t, err)
		ce.crlPath = e.dir + "/served.crl"
		require.NoError(t, ce.ossl.GenCRL(ce.crlPath, time.Hour))
		configure(o, srv.URL+"/ca.crl")
	}})
	return ce, srv
}

func TestCRLURL(t *testing.T) {
	ce, srv := newCRLURLEnv(t, func(o *proxy.Options, url string) {
		o.CRLURLs = append(o.CRLURLs, url)
	})
	assert.Equal(t, int64(1), srv.hits.Load(), "fetched once at start")
	revoked := ce.leaf("url-revoked")
	require.NoError(t, ce.ossl.Revoke(revoked, "keyCompromise"))
	require.NoError(t, ce.ossl.GenCRL(ce.crlPath, time.Hour))
	// The CRL in force was fetched at start and is refreshed on its own
	// schedule; a restart fetches the new one.
	e2 := *ce.env
	e2.auditPath = t.TempDir() + "/audit.log"
	e2.startProxy(envConfig{opts: func(o *proxy.Options) {
		o.CRLURLs = append(o.CRLURLs, srv.URL+"/ca.crl")
	}})
	ce2 := &crlEnv{env: &e2, ossl: ce.ossl, crlPath: ce.crlPath}
	require.Error(t, ce2.publish(clientTLS(ce.ca, revoked)))
	ce2.waitAudit(map[string]any{"event": "handshake", "outcome": "failed", "reason": "revoked",
		"client_cn": "url-revoked"})
	require.NoError(t, ce2.publish(clientTLS(ce.ca, ce.leaf("url-good"))))
}

func TestCRLURLUnreachableAtStart(t *testing.T) {
	dir := t.TempDir()
	ca, err := testpki.NewCA("unreachable")
	require.NoError(t, err)
	server, err := ca.Server("proxy")
	require.NoError(t, err)
	cert, key, err := server.WriteFiles(dir, "server")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(dir+"/ca.pem", ca.CertPEM(), 0o644))
	opts := proxy.NewOptions()
	opts.UpstreamTCPAddress = "127.0.0.1:1"
	opts.TLSCert, opts.TLSKey, opts.TLSRootCAFile = cert, key, dir+"/ca.pem"
	opts.CRLURLs = append(opts.CRLURLs, "http://127.0.0.1:1/ca.crl")
	_, err = proxy.New(opts, zaptest.NewLogger(t))
	assert.ErrorContains(t, err, "CRL URL")
}

// TestCRLDistributionPoint: a client certificate names where its CRL is;
// the proxy fetches it on first sight and applies it.
func TestCRLDistributionPoint(t *testing.T) {
	var dp string
	ce, srv := newCRLURLEnv(t, func(o *proxy.Options, url string) {
		o.CRLFetchDistributionPoints = true
		dp = url
	})
	issue := func(cn string) *testpki.Leaf {
		leaf, err := ce.ca.Issue(testpki.LeafOptions{CommonName: cn,
			CRLDistributionPoints: []string{dp}})
		require.NoError(t, err)
		return leaf
	}
	good, revoked := issue("dp-good"), issue("dp-revoked")
	require.NoError(t, ce.ossl.Revoke(revoked, "keyCompromise"))
	require.NoError(t, ce.ossl.GenCRL(ce.crlPath, time.Hour))

	assert.Zero(t, srv.hits.Load(), "nothing fetched before a client names the URL")
	require.NoError(t, ce.publish(clientTLS(ce.ca, good)))
	require.Error(t, ce.publish(clientTLS(ce.ca, revoked)))
	ce.waitAudit(map[string]any{"event": "handshake", "outcome": "failed", "reason": "revoked",
		"client_cn": "dp-revoked"})
	assert.Equal(t, int64(1), srv.hits.Load(), "the distribution point is fetched once")
}

// TestCRLDistributionPointDown: when the only CRL a certificate names
// cannot be fetched, the client is refused, not waved through.
func TestCRLDistributionPointDown(t *testing.T) {
	var dp string
	ce, srv := newCRLURLEnv(t, func(o *proxy.Options, url string) {
		o.CRLFetchDistributionPoints = true
		dp = url
	})
	srv.down.Store(true)
	leaf, err := ce.ca.Issue(testpki.LeafOptions{CommonName: "dp-unknown",
		CRLDistributionPoints: []string{dp}})
	require.NoError(t, err)
	require.Error(t, ce.publish(clientTLS(ce.ca, leaf)))
	ce.waitAudit(map[string]any{"event": "handshake", "outcome": "failed",
		"reason": "revocation_unknown", "client_cn": "dp-unknown"})
}
