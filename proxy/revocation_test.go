package proxy_test

import (
	"crypto/tls"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
	"github.com/nsqtls/nsqtls-proxy/proxy"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// crlEnv is an env whose CA is also an `openssl ca`, with the proxy
// reading the CRL that openssl generates.
type crlEnv struct {
	*env
	ossl    *testpki.OpenSSLCA
	crlPath string
}

func newCRLEnv(t *testing.T, validFor time.Duration, opts func(*proxy.Options)) *crlEnv {
	ce := &crlEnv{}
	ce.env = newEnv(t, envConfig{opts: opts, setup: func(e *env, o *proxy.Options) {
		var err error
		ce.ossl, err = e.ca.OpenSSL(filepath.Join(e.dir, "openssl-ca"))
		require.NoError(t, err)
		ce.crlPath = filepath.Join(e.dir, "ca.crl")
		require.NoError(t, ce.ossl.GenCRL(ce.crlPath, validFor))
		o.CRLFiles = append(o.CRLFiles, ce.crlPath)
	}})
	return ce
}

// publishCRL regenerates the CRL and swaps it in atomically, as a
// Kubernetes secret update or `mv` does.
func (ce *crlEnv) publishCRL(validFor time.Duration) {
	tmp := ce.crlPath + ".new"
	require.NoError(ce.t, ce.ossl.GenCRL(tmp, validFor))
	require.NoError(ce.t, os.Rename(tmp, ce.crlPath))
}

func (ce *crlEnv) leaf(cn string) *testpki.Leaf {
	leaf, err := ce.ca.Client(cn)
	require.NoError(ce.t, err)
	return leaf
}

func (ce *crlEnv) publish(cfg *tls.Config) error {
	producer, err := nsq.NewProducer(ce.addr, nsqConfig(cfg))
	require.NoError(ce.t, err)
	producer.SetLoggerLevel(nsq.LogLevelError)
	defer producer.Stop()
	return producer.Publish("revocation", []byte("x"))
}

// TestCRLRevokesLiveConsumer revokes a consumer's certificate while it
// holds unacknowledged messages: the proxy closes it, its messages go to
// another consumer, new handshakes with the certificate are refused, and
// the other consumer is not disturbed.
func TestCRLRevokesLiveConsumer(t *testing.T) {
	ce := newCRLEnv(t, time.Hour, func(o *proxy.Options) { o.MetricsAddress = "127.0.0.1:0" })
	doomed, survivor := ce.leaf("doomed"), ce.leaf("survivor")
	const n = 200

	// nsqd requeues a closed consumer's messages when their msg_timeout
	// runs out; keep it short.
	hoard := startConsumer(t, ce.env, clientTLS(ce.ca, doomed), func(*nsq.Message) bool {
		return false // never acknowledge
	}, func(c *nsq.Config) { c.MsgTimeout = 2 * time.Second })
	bodies := make([][]byte, n)
	for i := range bodies {
		bodies[i] = []byte(fmt.Sprintf("msg-%03d", i))
	}
	pub, err := nsq.NewProducer(ce.addr, nsqConfig(clientTLS(ce.ca, survivor)))
	require.NoError(t, err)
	defer pub.Stop()
	require.NoError(t, pub.MultiPublish("live", bodies))
	require.Eventually(t, func() bool { return hoard.count.Load() >= 10 },
		5*time.Second, 10*time.Millisecond, "the doomed consumer never got messages")

	var got sync.Map
	keeper := startConsumer(t, ce.env, clientTLS(ce.ca, survivor), func(m *nsq.Message) bool {
		got.Store(string(m.Body), true)
		return true
	}, nil)

	require.NoError(t, ce.ossl.Revoke(doomed, "keyCompromise"))
	ce.publishCRL(time.Hour)

	ev := ce.waitAudit(map[string]any{"event": "revoked_disconnect", "client_cn": "doomed"})
	assert.Equal(t, "keyCompromise", ev["revocation_reason"])
	assert.Equal(t, "revoked", ev["reason"])
	ce.waitAudit(map[string]any{"event": "close", "client_cn": "doomed", "reason": "revoked"})
	require.Eventually(t, func() bool { return syncMapLen(&got) == n }, 30*time.Second,
		20*time.Millisecond, "the survivor should get every message, the doomed one's too")

	// go-nsq reconnects the doomed consumer on its own; the proxy refuses.
	err = ce.publish(clientTLS(ce.ca, doomed))
	require.Error(t, err)
	ce.waitAudit(map[string]any{"event": "handshake", "outcome": "failed", "reason": "revoked",
		"client_cn": "doomed"})
	assert.Equal(t, 1, ce.countEvents(map[string]any{"event": "handshake", "outcome": "ok",
		"client_cn": "survivor", "upstream_local_addr": keeper.upstreamAddr(ce.env)}),
		"the survivor's connection must not be disturbed")
	assert.Zero(t, ce.countEvents(map[string]any{"event": "revoked_disconnect",
		"client_cn": "survivor"}))

	scraped := scrapeMetrics(t, ce.env)
	assert.Contains(t, scraped, "nsqtls_revoked_disconnects_total 1\n")
	assert.Regexp(t, `nsqtls_handshakes_total\{outcome="failed",reason="revoked"\} [1-9]`, scraped)
	assert.Contains(t, scraped, "nsqtls_crl_stale_issuers 0\n")
	assert.Contains(t, scraped, "nsqtls_crl_reload_failures_total 0\n")
}

func scrapeMetrics(t *testing.T, e *env) string {
	resp, err := http.Get("http://" + e.srv.MetricsAddr().String() + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(body)
}

type testConsumer struct {
	*nsq.Consumer
	count atomic.Int64
	cn    string
}

// startConsumer subscribes to "live"/"ch"; handle says whether to finish
// the message (false: leave it in flight).
func startConsumer(t *testing.T, e *env, cfg *tls.Config,
	handle func(*nsq.Message) bool, tune func(*nsq.Config)) *testConsumer {
	ncfg := nsqConfig(cfg)
	ncfg.MaxInFlight = 50
	ncfg.MaxAttempts = 0
	if tune != nil {
		tune(ncfg)
	}
	c, err := nsq.NewConsumer("live", "ch", ncfg)
	require.NoError(t, err)
	c.SetLoggerLevel(nsq.LogLevelError)
	tc := &testConsumer{Consumer: c, cn: cfg.Certificates[0].Leaf.Subject.CommonName}
	c.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		tc.count.Add(1)
		if !handle(m) {
			m.DisableAutoResponse()
		}
		return nil
	}))
	require.NoError(t, c.ConnectToNSQD(e.addr))
	t.Cleanup(c.Stop)
	return tc
}

// upstreamAddr is the upstream address of the consumer's one admitted
// connection, from the audit log.
func (c *testConsumer) upstreamAddr(e *env) any {
	for _, ev := range e.auditEvents() {
		if ev["event"] == "handshake" && ev["outcome"] == "ok" && ev["client_cn"] == c.cn {
			return ev["upstream_local_addr"]
		}
	}
	return nil
}

func syncMapLen(m *sync.Map) int {
	n := 0
	m.Range(func(any, any) bool { n++; return true })
	return n
}

// recordingCache is a client session cache that counts the sessions it
// hands out, to show that a client really tried to resume.
type recordingCache struct {
	tls.ClientSessionCache
	offered atomic.Int64
}

func (c *recordingCache) Get(key string) (*tls.ClientSessionState, bool) {
	s, ok := c.ClientSessionCache.Get(key)
	if ok {
		c.offered.Add(1)
	}
	return s, ok
}

// TestCRLRefusesResumption: a client connects, is revoked, and comes back
// with its session ticket; the resumed handshake is refused.
func TestCRLRefusesResumption(t *testing.T) {
	for _, v := range []struct {
		name string
		max  uint16
	}{{"TLS 1.2", tls.VersionTLS12}, {"TLS 1.3", tls.VersionTLS13}} {
		t.Run(v.name, func(t *testing.T) {
			ce := newCRLEnv(t, time.Hour, nil)
			ce.env = ce.sub(t)
			leaf, canary := ce.leaf("returning"), ce.leaf("canary")
			cache := &recordingCache{ClientSessionCache: tls.NewLRUClientSessionCache(4)}
			cfg := clientTLS(ce.ca, leaf)
			cfg.MaxVersion, cfg.ClientSessionCache = v.max, cache

			require.NoError(t, ce.publish(cfg))
			ce.waitAudit(map[string]any{"event": "close", "client_cn": "returning"})

			require.NoError(t, ce.ossl.Revoke(leaf, "superseded"))
			require.NoError(t, ce.ossl.Revoke(canary, "superseded"))
			ce.publishCRL(time.Hour)
			// A full handshake of the canary shows the new CRL is in force.
			require.Eventually(t, func() bool {
				return ce.publish(clientTLS(ce.ca, canary)) != nil
			}, 5*time.Second, 50*time.Millisecond)

			offered := cache.offered.Load()
			require.Error(t, ce.publish(cfg))
			assert.Greater(t, cache.offered.Load(), offered, "the client did not offer its session")
			ev := ce.waitAudit(map[string]any{"event": "handshake", "outcome": "failed",
				"reason": "revoked", "client_cn": "returning"})
			assert.Equal(t, true, ev["resumed"], "the refused handshake was a resumption")
			assert.Equal(t, "superseded", ev["revocation_reason"])
		})
	}
}

// TestCRLStale: a CRL past its nextUpdate refuses its issuer's clients,
// unless a grace period covers it.
func TestCRLStale(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		ce := newCRLEnv(t, time.Second, nil)
		ce.env = ce.sub(t)
		time.Sleep(1500 * time.Millisecond)
		require.Error(t, ce.publish(clientTLS(ce.ca, ce.leaf("innocent"))))
		ev := ce.waitAudit(map[string]any{"event": "handshake", "outcome": "failed",
			"reason": "revocation_unknown", "client_cn": "innocent"})
		assert.Contains(t, ev["detail"], "stale")
		assert.Equal(t, 1.0, testutil.ToFloat64(ce.srv.Metrics().Handshakes.WithLabelValues(
			"failed", "revocation_unknown")))
	})
	t.Run("grace", func(t *testing.T) {
		ce := newCRLEnv(t, time.Second, func(o *proxy.Options) { o.CRLStaleGrace = time.Hour })
		ce.env = ce.sub(t)
		time.Sleep(1500 * time.Millisecond)
		require.NoError(t, ce.publish(clientTLS(ce.ca, ce.leaf("innocent"))))
	})
}

// TestCRLBadReloadKeepsLastGood: a truncated CRL and one signed by the
// wrong key are refused on reload; the last good CRL stays in force.
func TestCRLBadReloadKeepsLastGood(t *testing.T) {
	ce := newCRLEnv(t, time.Hour, nil)
	bad, good := ce.leaf("bad"), ce.leaf("good")
	require.NoError(t, ce.ossl.Revoke(bad, "keyCompromise"))
	ce.publishCRL(time.Hour)
	require.Eventually(t, func() bool { return ce.publish(clientTLS(ce.ca, bad)) != nil },
		5*time.Second, 50*time.Millisecond)

	impostor, err := testpki.NewCA("test root") // same name, other key
	require.NoError(t, err)
	fake, err := impostor.OpenSSL(filepath.Join(ce.dir, "impostor"))
	require.NoError(t, err)
	goodCRL, err := os.ReadFile(ce.crlPath)
	require.NoError(t, err)
	for _, tc := range []struct {
		name  string
		write func(path string)
	}{
		{"truncated", func(path string) {
			require.NoError(t, os.WriteFile(path, goodCRL[:len(goodCRL)/2], 0o644))
		}},
		{"wrong signer", func(path string) { require.NoError(t, fake.GenCRL(path, time.Hour)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := strings.Count(ce.auditText(), `"client_cn":"bad"`)
			tc.write(ce.crlPath)
			time.Sleep(1500 * time.Millisecond) // past a poll
			assert.Error(t, ce.publish(clientTLS(ce.ca, bad)), "the revoked client got in")
			assert.NoError(t, ce.publish(clientTLS(ce.ca, good)))
			assert.Greater(t, strings.Count(ce.auditText(), `"client_cn":"bad"`), before)
		})
	}
}

// TestSameSerialTwoCAs: two CAs issued the same serial; revoking it on
// one CA's CRL refuses only that CA's certificate.
func TestSameSerialTwoCAs(t *testing.T) {
	second, err := testpki.NewCA("second root")
	require.NoError(t, err)
	ce := &crlEnv{}
	ce.env = newEnv(t, envConfig{setup: func(e *env, o *proxy.Options) {
		var err error
		ce.ossl, err = e.ca.OpenSSL(filepath.Join(e.dir, "openssl-ca"))
		require.NoError(t, err)
		ce.crlPath = filepath.Join(e.dir, "ca.crl")
		require.NoError(t, ce.ossl.GenCRL(ce.crlPath, time.Hour))
		o.CRLFiles = append(o.CRLFiles, ce.crlPath)
		bundle := append(e.ca.CertPEM(), second.CertPEM()...)
		require.NoError(t, os.WriteFile(o.TLSRootCAFile, bundle, 0o644))
	}})
	serial := big.NewInt(0x5eed)
	first, err := ce.ca.Issue(testpki.LeafOptions{CommonName: "first", Serial: serial})
	require.NoError(t, err)
	twin, err := second.Issue(testpki.LeafOptions{CommonName: "twin", Serial: serial})
	require.NoError(t, err)

	require.NoError(t, ce.ossl.Revoke(first, "keyCompromise"))
	ce.publishCRL(time.Hour)
	require.Eventually(t, func() bool { return ce.publish(clientTLS(ce.ca, first)) != nil },
		5*time.Second, 50*time.Millisecond)
	assert.NoError(t, ce.publish(clientTLS(ce.ca, twin)), "the other CA's serial is not revoked")
}

// TestCertificateExpiresWhileConnected: a connection is closed when its
// certificate expires, and the client cannot resume its session after.
func TestCertificateExpiresWhileConnected(t *testing.T) {
	e := newEnv(t, envConfig{})
	leaf, err := e.ca.Issue(testpki.LeafOptions{CommonName: "short-lived",
		NotAfter: time.Now().Add(2 * time.Second)})
	require.NoError(t, err)
	cfg := clientTLS(e.ca, leaf)
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	startConsumer(t, e, cfg, func(*nsq.Message) bool { return true }, nil)
	ev := e.waitAuditWithin(10*time.Second,
		map[string]any{"event": "close", "client_cn": "short-lived"})
	assert.Equal(t, "expired", ev["reason"])

	producer, err := nsq.NewProducer(e.addr, nsqConfig(cfg))
	require.NoError(t, err)
	producer.SetLoggerLevel(nsq.LogLevelError)
	defer producer.Stop()
	require.Error(t, producer.Publish("live", []byte("x")))
	e.waitAudit(map[string]any{"event": "handshake", "outcome": "failed", "reason": "expired",
		"client_cn": "short-lived"})
}

// TestRevokedIntermediateInBundle: the bundle holds the root and an
// intermediate; a client sends only its leaf, so crypto/tls ends its chain
// at the intermediate. Revoking the intermediate on the root's CRL (made
// by openssl) must still refuse it.
func TestRevokedIntermediateInBundle(t *testing.T) {
	var inter *testpki.CA
	ce := &crlEnv{}
	ce.env = newEnv(t, envConfig{setup: func(e *env, o *proxy.Options) {
		var err error
		inter, err = e.ca.Intermediate("bundled intermediate")
		require.NoError(t, err)
		ce.ossl, err = e.ca.OpenSSL(filepath.Join(e.dir, "openssl-ca"))
		require.NoError(t, err)
		ce.crlPath = filepath.Join(e.dir, "root.crl")
		require.NoError(t, ce.ossl.Revoke(&testpki.Leaf{Cert: inter.Cert}, "cACompromise"))
		require.NoError(t, ce.ossl.GenCRL(ce.crlPath, time.Hour))
		o.CRLFiles = append(o.CRLFiles, ce.crlPath)
		bundle := append(e.ca.CertPEM(), inter.CertPEM()...)
		require.NoError(t, os.WriteFile(o.TLSRootCAFile, bundle, 0o644))
	}})
	leaf, err := inter.Client("under-revoked-intermediate")
	require.NoError(t, err)
	leafOnly := clientTLS(ce.ca, leaf)
	leafOnly.Certificates[0].Certificate = leafOnly.Certificates[0].Certificate[:1]
	require.Error(t, ce.publish(leafOnly))
	ev := ce.waitAudit(map[string]any{"event": "handshake", "outcome": "failed",
		"reason": "revoked", "client_cn": "under-revoked-intermediate"})
	assert.Equal(t, "cACompromise", ev["revocation_reason"])
	require.NoError(t, ce.publish(clientTLS(ce.ca, ce.leaf("under-root"))))
}

// TestRevokedWhileDialling: a CRL revokes a client between its handshake
// and its admission, while the proxy waits on nsqd. The client is closed
// with a revoked_disconnect, is never audited as admitted, and its
// connection to nsqd does not outlive it.
func TestRevokedWhileDialling(t *testing.T) {
	ce := newCRLEnv(t, time.Hour, func(o *proxy.Options) {
		o.OCSP = "off"
		o.UpstreamDialTimeout = 10 * time.Second
	})
	leaf := ce.leaf("caught-in-dial")
	require.NoError(t, ce.nsqd.Pause())
	resumed := false
	defer func() {
		if !resumed {
			_ = ce.nsqd.Resume()
		}
	}()
	done := make(chan error, 1)
	go func() { done <- ce.publish(clientTLS(ce.ca, leaf)) }()
	time.Sleep(500 * time.Millisecond) // the handshake is done; nsqd does not answer

	require.NoError(t, ce.ossl.Revoke(leaf, "keyCompromise"))
	ce.publishCRL(time.Hour)
	ce.waitAudit(map[string]any{"event": "revoked_disconnect", "client_cn": "caught-in-dial"})
	require.NoError(t, ce.nsqd.Resume())
	resumed = true
	require.Error(t, <-done)

	assert.Zero(t, ce.countEvents(map[string]any{"event": "handshake", "outcome": "ok",
		"client_cn": "caught-in-dial"}), "a revoked client was audited as admitted")
	// nsqd, resumed, takes the proxy's waiting connection and its IDENTIFY.
	require.Eventually(t, func() bool {
		return strings.Contains(ce.nsqd.Log(), "UserAgent:go-nsq/")
	}, 5*time.Second, 20*time.Millisecond)
	// Only the proxy's idle settings connection may stay open at nsqd.
	require.Eventually(t, func() bool {
		log := ce.nsqd.Log()
		return strings.Count(log, "TCP: new client(")-strings.Count(log, "exiting ioloop") == 1
	}, 5*time.Second, 20*time.Millisecond, "a connection to nsqd outlived its client:\n%s",
		ce.nsqd.Log())
}
