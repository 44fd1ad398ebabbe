package proxy_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/nsqio/go-nsq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// authServer is a minimal nsqd auth endpoint: one secret gets publish and
// subscribe on every topic.
type authServer struct {
	secret string
	mu     sync.Mutex
	seen   []string
}

func (a *authServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	secret := r.URL.Query().Get("secret")
	a.mu.Lock()
	a.seen = append(a.seen, secret)
	a.mu.Unlock()
	if secret != a.secret {
		http.Error(w, "forbidden", http.StatusForbidden)
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{
		"ttl":      3600,
		"identity": "test-identity",
		"authorizations": []map[string]any{{
			"topic": ".*", "channels": []string{".*"},
			"permissions": []string{"subscribe", "publish"},
		}},
	})
}

// TestAuthPassesThrough runs nsqd with --auth-http-address: the proxy
// announces auth_required, and AUTH travels to nsqd inside TLS untouched.
func TestAuthPassesThrough(t *testing.T) {
	auth := &authServer{secret: "s3cret-auth-body"}
	hs := httptest.NewServer(auth)
	defer hs.Close()
	e := newEnv(t, envConfig{nsqdArgs: []string{
		"--auth-http-address=" + strings.TrimPrefix(hs.URL, "http://")}})

	t.Run("right secret", func(t *testing.T) {
		e := e.sub(t)
		cfg := nsqConfig(e.client("authed"))
		cfg.AuthSecret = auth.secret
		producer, err := nsq.NewProducer(e.addr, cfg)
		require.NoError(t, err)
		defer producer.Stop()
		require.NoError(t, producer.Publish("authed_topic", []byte("hello")))

		clients := e.nsqdClients()
		require.Len(t, clients, 1)
		assert.Equal(t, "test-identity", clients[0].AuthIdentity)
		auth.mu.Lock()
		assert.Contains(t, auth.seen, auth.secret)
		auth.mu.Unlock()
	})
	t.Run("wrong secret", func(t *testing.T) {
		e := e.sub(t)
		cfg := nsqConfig(e.client("wrong-secret"))
		cfg.AuthSecret = "not-the-secret"
		producer, err := nsq.NewProducer(e.addr, cfg)
		require.NoError(t, err)
		producer.SetLoggerLevel(nsq.LogLevelError)
		defer producer.Stop()
		err = producer.Publish("authed_topic", []byte("hello"))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "E_AUTH_FAILED")
	})
	assert.NotContains(t, e.auditText(), auth.secret)
	assert.NotContains(t, e.auditText(), "not-the-secret")
}
