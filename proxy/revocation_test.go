package proxy_test

import (
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
	"github.com/nsqtls/nsqtls-proxy/proxy"
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
	ce := newCRLEnv(t, time.Hour, nil)
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
