package proxy_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/nsqtls/nsqtls-proxy/internal/nsqdtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// moveMessages publishes n distinct bodies through the proxy with one
// client and consumes them with another, and checks that every body
// arrived exactly once and unchanged.
// check, if not nil, is given nsqd's view of the consumer while it is
// still connected.
func moveMessages(t *testing.T, e *env, topic string, n int, tune func(*nsq.Config),
	check func(nsqdtest.Client)) {
	t.Helper()
	pubCfg := nsqConfig(e.client("producer"))
	subCfg := nsqConfig(e.client("consumer"))
	subCfg.MaxInFlight = 500
	if tune != nil {
		tune(pubCfg)
		tune(subCfg)
	}

	sent := make(map[string]bool, n)
	var mu sync.Mutex
	got := make(map[string]int, n)
	all := make(chan struct{})
	consumer, err := nsq.NewConsumer(topic, "ch", subCfg)
	require.NoError(t, err)
	consumer.SetLoggerLevel(nsq.LogLevelWarning)
	consumer.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		mu.Lock()
		defer mu.Unlock()
		got[string(m.Body)]++
		if len(got) == n {
			close(all)
		}
		return nil
	}))

	producer, err := nsq.NewProducer(e.addr, pubCfg)
	require.NoError(t, err)
	producer.SetLoggerLevel(nsq.LogLevelWarning)
	defer producer.Stop()
	// Create the topic and channel before publishing so nothing is
	// published to a topic without the channel.
	require.NoError(t, consumer.ConnectToNSQD(e.addr))
	defer consumer.Stop()

	const batch = 100
	for i := 0; i < n; i += batch {
		bodies := make([][]byte, 0, batch)
		for j := i; j < min(i+batch, n); j++ {
			body := fmt.Sprintf("%s-%06d-%x", topic, j, j*7919)
			sent[body] = true
			bodies = append(bodies, []byte(body))
		}
		require.NoError(t, producer.MultiPublish(topic, bodies))
	}

	select {
	case <-all:
	case <-time.After(60 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("received %d of %d messages", len(got), n)
	}
	if check != nil {
		check(e.consumerOf(topic))
	}
	mu.Lock()
	defer mu.Unlock()
	for body, count := range got {
		assert.True(t, sent[body], "received a body never sent: %q", body)
		assert.Equal(t, 1, count, "body %q received %d times", body, count)
	}
	assert.Len(t, got, n)
}

func TestMessagesThroughProxy(t *testing.T) {
	e := newEnv(t, envConfig{})
	cases := []struct {
		name        string
		tune        func(*nsq.Config)
		compression string
	}{
		{"plain", nil, ""},
		{"snappy", func(c *nsq.Config) { c.Snappy = true }, "snappy"},
		{"deflate", func(c *nsq.Config) { c.Deflate = true; c.DeflateLevel = 5 }, "deflate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := e.sub(t)
			moveMessages(t, e, "t_"+tc.name, 10000, tc.tune, func(c nsqdtest.Client) {
				assert.Equal(t, tc.compression == "snappy", c.Snappy)
				assert.Equal(t, tc.compression == "deflate", c.Deflate)
				assert.False(t, c.TLS, "the hop to nsqd is plaintext on loopback")
			})
		})
	}
	ok := e.waitAudit(map[string]any{"event": "handshake", "outcome": "ok", "client_cn": "consumer"})
	assert.Equal(t, "nsqd_tcp", ok["listener"])
	assert.NotEmpty(t, ok["upstream_local_addr"])
	assert.Equal(t, false, ok["resumed"])
	e.waitAudit(map[string]any{"event": "close", "client_cn": "consumer"})
}

// consumerUses checks one compression flag of the consumer as nsqd sees it.
func consumerUses(t *testing.T, compression string, want bool) func(nsqdtest.Client) {
	return func(c nsqdtest.Client) {
		switch compression {
		case "snappy":
			assert.Equal(t, want, c.Snappy)
		case "deflate":
			assert.Equal(t, want, c.Deflate)
		}
	}
}

// consumerOf returns the one client of topic's channel "ch" in /stats.
func (e *env) consumerOf(topic string) nsqdtest.Client {
	stats, err := e.nsqd.Stats(context.Background())
	require.NoError(e.t, err)
	for _, tp := range stats.Topics {
		if tp.TopicName != topic {
			continue
		}
		for _, ch := range tp.Channels {
			require.Len(e.t, ch.Clients, 1)
			return ch.Clients[0]
		}
	}
	e.t.Fatalf("topic %s has no channel in /stats", topic)
	return nsqdtest.Client{}
}
