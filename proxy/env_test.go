package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/nsqtls/nsqtls-proxy/internal/nsqdtest"
	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
	"github.com/nsqtls/nsqtls-proxy/proxy"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

// env is a real nsqd on loopback with an in-process proxy in front of it,
// and a CA that issued the proxy's server certificate and client
// certificates.
type env struct {
	t         *testing.T
	dir       string
	ca        *testpki.CA
	nsqd      *nsqdtest.NSQD
	srv       *proxy.Server
	addr      string
	auditPath string
	stop      context.CancelFunc
	done      chan error
}

type envConfig struct {
	nsqdArgs []string
	opts     func(*proxy.Options)
	// setup runs after the CA and files exist, before the proxy starts.
	setup func(e *env, o *proxy.Options)
}

func newEnv(t *testing.T, cfg envConfig) *env {
	t.Helper()
	dir := t.TempDir()
	ca, err := testpki.NewCA("test root")
	require.NoError(t, err)

	n, err := nsqdtest.Start(filepath.Join(dir, "nsqd"), cfg.nsqdArgs...)
	require.NoError(t, err)
	t.Cleanup(n.Stop)

	e := &env{t: t, dir: dir, ca: ca, nsqd: n, auditPath: filepath.Join(dir, "audit.log")}
	e.startProxy(cfg)
	return e
}

func (e *env) startProxy(cfg envConfig) {
	t := e.t
	server, err := e.ca.Server("nsqtls-proxy")
	require.NoError(t, err)
	certPath, keyPath, err := server.WriteFiles(e.dir, "server")
	require.NoError(t, err)
	caPath := filepath.Join(e.dir, "ca.pem")
	require.NoError(t, os.WriteFile(caPath, e.ca.CertPEM(), 0o644))

	opts := proxy.NewOptions()
	opts.TCPAddress = "127.0.0.1:0"
	opts.UpstreamTCPAddress = e.nsqd.TCPAddr
	opts.TLSCert, opts.TLSKey, opts.TLSRootCAFile = certPath, keyPath, caPath
	opts.AuditLog = e.auditPath
	opts.TLSHandshakeTimeout = 3 * time.Second
	opts.DrainTimeout = time.Second
	if cfg.opts != nil {
		cfg.opts(opts)
	}
	if cfg.setup != nil {
		cfg.setup(e, opts)
	}
	srv, err := proxy.New(opts, zaptest.NewLogger(t))
	require.NoError(t, err)
	require.NoError(t, srv.Listen())
	ctx, cancel := context.WithCancel(context.Background())
	e.srv, e.addr, e.stop, e.done = srv, srv.Addr().String(), cancel, make(chan error, 1)
	go func() { e.done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-e.done)
	})
	readyCtx, readyCancel := context.WithTimeout(ctx, 10*time.Second)
	defer readyCancel()
	require.NoError(t, srv.WaitReady(readyCtx), "proxy never learned nsqd's settings")
}

// sub is e seen from a subtest: failures are reported to t.
func (e *env) sub(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

// client issues a client certificate from e.ca and returns a TLS config
// for it that trusts e.ca.
func (e *env) client(cn string) *tls.Config {
	leaf, err := e.ca.Client(cn)
	require.NoError(e.t, err)
	return clientTLS(e.ca, leaf)
}

func clientTLS(serverCA *testpki.CA, leaf *testpki.Leaf) *tls.Config {
	cfg := &tls.Config{RootCAs: serverCA.Pool()}
	if leaf != nil {
		cfg.Certificates = []tls.Certificate{leaf.TLSCertificate()}
	}
	return cfg
}

func nsqConfig(tlsConfig *tls.Config) *nsq.Config {
	cfg := nsq.NewConfig()
	cfg.TlsV1 = true
	cfg.TlsConfig = tlsConfig
	cfg.DialTimeout = 3 * time.Second
	return cfg
}

// auditEvents reads every audit line written so far.
func (e *env) auditEvents() []map[string]any {
	f, err := os.Open(e.auditPath)
	require.NoError(e.t, err)
	defer f.Close()
	var events []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev map[string]any
		require.NoError(e.t, json.Unmarshal(sc.Bytes(), &ev), "audit line %q", sc.Text())
		events = append(events, ev)
	}
	return events
}

// waitAudit waits for an audit event with all the given field values.
func (e *env) waitAudit(want map[string]any) map[string]any {
	e.t.Helper()
	return e.waitAuditWithin(5*time.Second, want)
}

func (e *env) waitAuditWithin(d time.Duration, want map[string]any) map[string]any {
	e.t.Helper()
	var found map[string]any
	require.Eventually(e.t, func() bool {
		for _, ev := range e.auditEvents() {
			if matches(ev, want) {
				found = ev
				return true
			}
		}
		return false
	}, d, 20*time.Millisecond, "no audit event like %v in:\n%s", want, e.auditText())
	return found
}

// countEvents counts the audit events with all the given field values.
func (e *env) countEvents(want map[string]any) int {
	n := 0
	for _, ev := range e.auditEvents() {
		if matches(ev, want) {
			n++
		}
	}
	return n
}

func (e *env) auditText() string {
	b, _ := os.ReadFile(e.auditPath)
	return string(b)
}

func matches(ev, want map[string]any) bool {
	for k, v := range want {
		if ev[k] != v {
			return false
		}
	}
	return true
}

// nsqdClients lists the clients nsqd's /stats shows.
func (e *env) nsqdClients() []nsqdtest.Client {
	stats, err := e.nsqd.Stats(context.Background())
	require.NoError(e.t, err)
	return stats.Clients()
}

func containsAny(s string, subs ...string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
