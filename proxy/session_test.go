package proxy_test

import (
	"crypto/tls"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/nsqtls/nsqtls-proxy/proxy"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// connectTwice publishes from two successive connections that share one
// TLS session cache and returns their handshake audit events.
func connectTwice(t *testing.T, e *env, cn string, maxVersion uint16) []map[string]any {
	cfg := e.client(cn)
	cfg.MaxVersion = maxVersion
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	for i := 0; i < 2; i++ {
		producer, err := nsq.NewProducer(e.addr, nsqConfig(cfg))
		require.NoError(t, err)
		require.NoError(t, producer.Publish("resume", []byte("x")))
		producer.Stop()
		// The TLS 1.3 ticket arrives after the handshake; wait for the
		// connection to be over before reusing the cache.
		require.Eventually(t, func() bool {
			return e.countEvents(map[string]any{"event": "close", "client_cn": cn}) == i+1
		}, 5*time.Second, 10*time.Millisecond)
	}
	return e.handshakes(cn)
}

func (e *env) handshakes(cn string) []map[string]any {
	var out []map[string]any
	for _, ev := range e.auditEvents() {
		if ev["event"] == "handshake" && ev["outcome"] == "ok" && ev["client_cn"] == cn {
			out = append(out, ev)
		}
	}
	return out
}

func TestSessionResumption(t *testing.T) {
	for _, v := range []struct {
		name string
		max  uint16
		text string
	}{{"TLS 1.2", tls.VersionTLS12, "TLS 1.2"}, {"TLS 1.3", tls.VersionTLS13, "TLS 1.3"}} {
		t.Run(v.name+" on", func(t *testing.T) {
			e := newEnv(t, envConfig{})
			hs := connectTwice(t, e, "resumer", v.max)
			require.Len(t, hs, 2)
			assert.Equal(t, false, hs[0]["resumed"])
			assert.Equal(t, true, hs[1]["resumed"], "second connection should resume")
			assert.Equal(t, v.text, hs[1]["tls_version"])
			assert.Equal(t, hs[0]["client_fingerprint_sha256"], hs[1]["client_fingerprint_sha256"])
		})
		t.Run(v.name+" off", func(t *testing.T) {
			e := newEnv(t, envConfig{opts: func(o *proxy.Options) { o.TLSSessionResumption = false }})
			hs := connectTwice(t, e, "resumer", v.max)
			require.Len(t, hs, 2)
			assert.Equal(t, false, hs[1]["resumed"])
		})
	}
}

// TestMinVersion: with --tls-min-version tls1.3, a client capped at TLS
// 1.2 (as go-nsq's option-based TLS settings are) is refused.
func TestMinVersion(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *proxy.Options) { o.TLSMinVersion = "tls1.3" }})
	cfg := e.client("old-client")
	cfg.MaxVersion = tls.VersionTLS12
	producer, err := nsq.NewProducer(e.addr, nsqConfig(cfg))
	require.NoError(t, err)
	producer.SetLoggerLevel(nsq.LogLevelError)
	err = producer.Publish("v", []byte("x"))
	producer.Stop()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "protocol version")
	e.waitAudit(map[string]any{"event": "handshake", "outcome": "failed", "reason": "tls_version"})

	modern, err := nsq.NewProducer(e.addr, nsqConfig(e.client("new-client")))
	require.NoError(t, err)
	require.NoError(t, modern.Publish("v", []byte("x")))
	modern.Stop()
	e.waitAudit(map[string]any{"event": "handshake", "outcome": "ok", "tls_version": "TLS 1.3"})
}
