package proxy_test

import (
	"crypto/tls"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/nsqtls/nsqtls-proxy/internal/nsqdtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestShutdownDrains: after the stop signal the proxy accepts no new
// client, and after the drain timeout it closes the ones still open, with
// a close event saying so, and Serve returns nil.
func TestShutdownDrains(t *testing.T) {
	e := newEnv(t, envConfig{})
	consumer, err := nsq.NewConsumer("drain", "ch", nsqConfig(e.client("long-lived")))
	require.NoError(t, err)
	consumer.SetLoggerLevel(nsq.LogLevelError)
	consumer.AddHandler(nsq.HandlerFunc(func(*nsq.Message) error { return nil }))
	require.NoError(t, consumer.ConnectToNSQD(e.addr))
	defer consumer.Stop()
	e.waitAudit(map[string]any{"event": "handshake", "outcome": "ok", "client_cn": "long-lived"})

	start := time.Now()
	e.stop()
	select {
	case err := <-e.done:
		require.NoError(t, err)
		e.done <- nil // for the cleanup that also waits
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the drain timeout")
	}
	assert.GreaterOrEqual(t, time.Since(start), time.Second, "drain timeout not honoured")
	e.waitAudit(map[string]any{"event": "close", "client_cn": "long-lived", "reason": "shutdown"})
	assert.Empty(t, proxyGoroutines(), "goroutines outlived Serve")

	late, err := nsq.NewProducer(e.addr, nsqConfig(e.client("late")))
	require.NoError(t, err)
	late.SetLoggerLevel(nsq.LogLevelError)
	assert.Error(t, late.Ping(), "a stopped proxy must not accept clients")
}

// proxyGoroutines returns the stacks of goroutines running proxy code.
func proxyGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "nsqtls-proxy/proxy.") && !strings.Contains(g, "proxy_test.") {
			out = append(out, g)
		}
	}
	return out
}

// TestUnixSocketUpstreamAndRestart runs nsqd on a unix socket, restarts it
// with snappy turned off, and checks that the proxy learns the new
// settings: a client asking for snappy is then told no, and works.
func TestUnixSocketUpstreamAndRestart(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "nsqd.sock")
	e := newEnv(t, envConfig{nsqdArgs: []string{"--tcp-address=" + sock}})
	require.Equal(t, sock, e.nsqd.TCPAddr)

	snappy := func(c *nsq.Config) { c.Snappy = true }
	moveMessages(t, e, "before_restart", 1000, snappy, consumerUses(t, "snappy", true))

	e.nsqd.Stop()
	restarted, err := nsqdtest.Start(filepath.Join(e.dir, "nsqd2"),
		"--tcp-address="+sock, "--snappy=false")
	require.NoError(t, err)
	t.Cleanup(restarted.Stop)
	e.nsqd = restarted

	// The proxy relearns when its idle connection to the old nsqd ends.
	require.Eventually(t, func() bool {
		return strings.Contains(restarted.Log(), "settings-probe")
	}, 10*time.Second, 20*time.Millisecond)
	moveMessages(t, e, "after_restart", 1000, snappy, consumerUses(t, "snappy", false))
}

// TestSlowReaderDropped: a client that stops reading while nsqd sends is
// dropped once a write to it has waited a heartbeat interval, as nsqd
// would drop it, instead of pinning the connection forever.
func TestSlowReaderDropped(t *testing.T) {
	e := newEnv(t, envConfig{})
	producer, err := nsq.NewProducer(e.addr, nsqConfig(e.client("filler")))
	require.NoError(t, err)
	defer producer.Stop()
	body := make([]byte, 10<<10)
	batch := make([][]byte, 100)
	for i := range batch {
		batch[i] = body
	}
	for i := 0; i < 20; i++ {
		require.NoError(t, producer.MultiPublish("big", batch))
	}

	conn, err := net.Dial("tcp", e.addr)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.Write(rawIdentify([]byte(
		`{"feature_negotiation":true,"tls_v1":true,"heartbeat_interval":1000}`)))
	require.NoError(t, err)
	frameType, _ := readTestFrame(t, conn)
	require.Equal(t, int32(0), frameType)
	cfg := e.client("stalled")
	cfg.ServerName = "127.0.0.1"
	tc := tls.Client(conn, cfg)
	require.NoError(t, tc.Handshake())
	_, data := readTestFrame(t, tc)
	require.Equal(t, "OK", string(data))
	_, err = tc.Write([]byte("SUB big ch\nRDY 2500\n"))
	require.NoError(t, err)

	// Read nothing from now on.
	ev := e.waitAuditWithin(10*time.Second,
		map[string]any{"event": "close", "client_cn": "stalled"})
	assert.Contains(t, []any{"client_error", "upstream_closed"}, ev["reason"])
}
