package proxy_test

import (
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
	"github.com/nsqtls/nsqtls-proxy/proxy"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ocspEnv is an env whose CA is an `openssl ca` with a real `openssl ocsp`
// responder that the proxy asks.
type ocspEnv struct {
	*crlEnv
	responder *testpki.OCSPResponder
}

func newOCSPEnv(t *testing.T, mode string, signer func(*testpki.CA) *testpki.Leaf) *ocspEnv {
	oe := &ocspEnv{crlEnv: &crlEnv{}}
	oe.env = newEnv(t, envConfig{setup: func(e *env, o *proxy.Options) {
		var err error
		oe.ossl, err = e.ca.OpenSSL(filepath.Join(e.dir, "openssl-ca"))
		require.NoError(t, err)
		var s *testpki.Leaf
		if signer != nil {
			s = signer(e.ca)
		}
		oe.responder, err = oe.ossl.StartOCSP(s)
		require.NoError(t, err)
		t.Cleanup(oe.responder.Stop)
		o.OCSP, o.OCSPResponderURL, o.OCSPTimeout = mode, oe.responder.URL, time.Second
	}})
	return oe
}

// validLeaf issues a client certificate and records it as valid in the
// index; the responder must be (re)started after.
func (oe *ocspEnv) validLeaf(cn string) *testpki.Leaf {
	leaf := oe.leaf(cn)
	require.NoError(oe.t, oe.ossl.Valid(leaf))
	return leaf
}

func (oe *ocspEnv) restartResponder(signer *testpki.Leaf) {
	oe.responder.Stop()
	var err error
	oe.responder, err = oe.ossl.StartOCSP(signer)
	require.NoError(oe.t, err)
	oe.t.Cleanup(oe.responder.Stop)
}

func TestOCSPAgainstOpenSSL(t *testing.T) {
	t.Run("good and revoked, hard-fail", func(t *testing.T) {
		oe := newOCSPEnv(t, "hard-fail", nil)
		good, doomed := oe.validLeaf("ocsp-good"), oe.validLeaf("ocsp-doomed")
		require.NoError(t, oe.ossl.Revoke(doomed, "keyCompromise"))
		oe.restartResponder(nil)
		// The proxy's responder URL is fixed at start: keep the port by
		// pointing at the new one through a fresh proxy.
		oe2 := restartProxyWithURL(t, oe)
		require.NoError(t, oe2.publish(clientTLS(oe.ca, good)))
		ok := oe2.waitAudit(map[string]any{"event": "handshake", "outcome": "ok",
			"client_cn": "ocsp-good"})
		assert.Nil(t, ok["revocation_soft_fail"])

		require.Error(t, oe2.publish(clientTLS(oe.ca, doomed)))
		ev := oe2.waitAudit(map[string]any{"event": "handshake", "outcome": "failed",
			"reason": "revoked", "client_cn": "ocsp-doomed"})
		assert.Equal(t, "keyCompromise", ev["revocation_reason"])

		unknown := oe.leaf("ocsp-unknown") // not in the index
		require.Error(t, oe2.publish(clientTLS(oe.ca, unknown)))
		oe2.waitAudit(map[string]any{"event": "handshake", "outcome": "failed",
			"reason": "revocation_unknown", "client_cn": "ocsp-unknown"})
	})
	t.Run("responder down, soft-fail", func(t *testing.T) {
		oe := newOCSPEnv(t, "soft-fail", nil)
		oe.responder.Stop()
		require.NoError(t, oe.publish(clientTLS(oe.ca, oe.leaf("ocsp-soft"))))
		ev := oe.waitAudit(map[string]any{"event": "handshake", "outcome": "ok",
			"client_cn": "ocsp-soft"})
		assert.Equal(t, true, ev["revocation_soft_fail"])
		assert.Contains(t, ev["revocation_detail"], "no OCSP answer")
		assert.Equal(t, 1.0, testutil.ToFloat64(oe.srv.Metrics().OCSPSoftFails))
	})
	t.Run("responder down, hard-fail", func(t *testing.T) {
		oe := newOCSPEnv(t, "hard-fail", nil)
		oe.responder.Stop()
		start := time.Now()
		require.Error(t, oe.publish(clientTLS(oe.ca, oe.leaf("ocsp-hard"))))
		oe.waitAudit(map[string]any{"event": "handshake", "outcome": "failed",
			"reason": "revocation_unknown", "client_cn": "ocsp-hard"})
		assert.Less(t, time.Since(start), 5*time.Second)
	})
	t.Run("delegated responder", func(t *testing.T) {
		oe := newOCSPEnv(t, "hard-fail", func(ca *testpki.CA) *testpki.Leaf {
			return issueSigner(t, ca, []x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning})
		})
		leaf := oe.validLeaf("ocsp-delegated")
		oe.restartResponder(issueSigner(t, oe.ca,
			[]x509.ExtKeyUsage{x509.ExtKeyUsageOCSPSigning}))
		oe2 := restartProxyWithURL(t, oe)
		require.NoError(t, oe2.publish(clientTLS(oe.ca, leaf)))
	})
	t.Run("delegated responder without OCSPSigning", func(t *testing.T) {
		oe := newOCSPEnv(t, "hard-fail", nil)
		leaf := oe.validLeaf("ocsp-bad-delegate")
		oe.restartResponder(issueSigner(t, oe.ca,
			[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}))
		oe2 := restartProxyWithURL(t, oe)
		require.Error(t, oe2.publish(clientTLS(oe.ca, leaf)))
		ev := oe2.waitAudit(map[string]any{"event": "handshake", "outcome": "failed",
			"reason": "revocation_unknown", "client_cn": "ocsp-bad-delegate"})
		assert.Contains(t, ev["detail"], "OCSPSigning")
	})
}

func issueSigner(t *testing.T, ca *testpki.CA, eku []x509.ExtKeyUsage) *testpki.Leaf {
	leaf, err := ca.Issue(testpki.LeafOptions{CommonName: "ocsp responder", ExtKeyUsage: eku})
	require.NoError(t, err)
	return leaf
}

// restartProxyWithURL starts a second proxy in front of the same nsqd,
// asking the responder's current URL.
func restartProxyWithURL(t *testing.T, oe *ocspEnv) *crlEnv {
	e2 := *oe.env
	e2.auditPath = filepath.Join(t.TempDir(), "audit.log")
	e2.startProxy(envConfig{opts: func(o *proxy.Options) {
		o.OCSP, o.OCSPResponderURL, o.OCSPTimeout = "hard-fail", oe.responder.URL, time.Second
	}})
	return &crlEnv{env: &e2, ossl: oe.ossl}
}
