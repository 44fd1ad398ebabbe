package proxy_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// nsqjsDir holds package.json and package-lock.json pinning nsqjs, and
// pubsub.js, which drives it. `make node-deps` installs node_modules there.
const nsqjsDir = "testdata/nsqjs"

// nsqjsSettings is pubsub.js's JSON argument; see the top of pubsub.js.
type nsqjsSettings struct {
	Address     string `json:"address"`
	CA          string `json:"ca"`
	Cert        string `json:"cert,omitempty"`
	Key         string `json:"key,omitempty"`
	Topic       string `json:"topic"`
	Count       int    `json:"count,omitempty"`
	Compression string `json:"compression,omitempty"`
	Mode        string `json:"mode,omitempty"`
	TLSMax      string `json:"tls_max_version,omitempty"`
	TimeoutMS   int    `json:"timeout_ms,omitempty"`
}

// nsqjsConn is what pubsub.js reports of one nsqjs connection.
type nsqjsConn struct {
	LocalAddr    string `json:"local_addr"`
	TLSv1        bool   `json:"tls_v1"`
	Snappy       bool   `json:"snappy"`
	Deflate      bool   `json:"deflate"`
	DeflateLevel int    `json:"deflate_level"`
	Inflater     string `json:"inflater"`
	TLSProtocol  string `json:"tls_protocol"`
	Authorized   bool   `json:"authorized"`
	NsqdVersion  string `json:"nsqd_version"`
}

// nsqjsResult is pubsub.js's one line of output.
type nsqjsResult struct {
	OK    bool `json:"ok"`
	Error *struct {
		Message string `json:"message"`
		Code    string `json:"code"`
		Reason  string `json:"reason"`
	} `json:"error"`
	Received    int         `json:"received"`
	Distinct    int         `json:"distinct"`
	Unexpected  int         `json:"unexpected"`
	MaxAttempts int         `json:"max_attempts"`
	Digests     []string    `json:"digests"`
	Published   int         `json:"published"`
	Writer      *nsqjsConn  `json:"writer"`
	Readers     []nsqjsConn `json:"readers"`
}

func (r *nsqjsResult) errorText() string {
	if r.Error == nil {
		return ""
	}
	return strings.Join([]string{r.Error.Message, r.Error.Code, r.Error.Reason}, " | ")
}

// nsqjsScript finds node and pubsub.js, and fails the test (rather than
// skipping it) when node or the installed nsqjs is missing or stale.
func nsqjsScript(t *testing.T) (node, script string) {
	t.Helper()
	node, err := exec.LookPath("node")
	require.NoError(t, err, "the nsqjs test needs Node.js (v20) on PATH")
	dir, err := filepath.Abs(nsqjsDir)
	require.NoError(t, err)

	var lock struct {
		Packages map[string]struct {
			Version string `json:"version"`
		} `json:"packages"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &lock))
	want := lock.Packages["node_modules/nsqjs"].Version
	require.NotEmpty(t, want, "package-lock.json does not pin nsqjs")

	var installed struct {
		Version string `json:"version"`
	}
	b, err = os.ReadFile(filepath.Join(dir, "node_modules", "nsqjs", "package.json"))
	if errors.Is(err, os.ErrNotExist) {
		t.Fatalf("nsqjs is not installed in %s: run `make node-deps` first", nsqjsDir)
	}
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &installed))
	if installed.Version != want {
		t.Fatalf("%s/node_modules has nsqjs %s, package-lock.json pins %s: run `make node-deps`",
			nsqjsDir, installed.Version, want)
	}
	return node, filepath.Join(dir, "pubsub.js")
}

// runNsqjs runs pubsub.js with s and returns its report, its stderr and
// its exit error (nil for status 0).
func runNsqjs(t *testing.T, node, script string, s nsqjsSettings) (*nsqjsResult, string, error) {
	t.Helper()
	arg, err := json.Marshal(s)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, script, string(arg))
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	runErr := cmd.Run()
	t.Logf("pubsub.js mode=%q topic=%s address=%s compression=%q tls_max_version=%q: %v, exit: %v",
		s.Mode, s.Topic, s.Address, s.Compression, s.TLSMax,
		time.Since(start).Round(time.Millisecond), runErr)
	require.NoError(t, ctx.Err(), "pubsub.js did not finish; stderr:\n%s", stderr.String())

	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var res nsqjsResult
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &res),
		"pubsub.js printed no JSON result (exit: %v)\nstdout:\n%s\nstderr:\n%s",
		runErr, stdout.String(), stderr.String())
	return &res, stderr.String(), runErr
}

// nsqjsBody is message i of topic as pubsub.js builds it: "topic:i:" and
// filler bytes of every value, some bodies longer than a TLS record.
func nsqjsBody(topic string, i int) []byte {
	n := (i*37)%300 + 1
	if i%50 == 7 {
		n = 20000 + i
	}
	b := fmt.Appendf(nil, "%s:%d:", topic, i)
	for k := 0; k < n; k++ {
		b = append(b, byte(i*131+k*17))
	}
	return b
}

// assertEachOnce checks that digests (one per delivery) are exactly the
// digests of nsqjsBody(topic, 0..n-1), each once.
func assertEachOnce(t *testing.T, topic string, n int, digests []string) {
	t.Helper()
	want := make(map[string]int, n)
	for i := 0; i < n; i++ {
		sum := sha256.Sum256(nsqjsBody(topic, i))
		want[hex.EncodeToString(sum[:])] = i
	}
	require.Len(t, want, n, "the test bodies are not distinct")
	seen := make(map[string]int, n)
	var unexpected, dups int
	for _, d := range digests {
		if _, ok := want[d]; !ok {
			unexpected++
		}
		seen[d]++
		if seen[d] == 2 {
			dups++
		}
	}
	var missing []int
	for d, i := range want {
		if seen[d] == 0 {
			missing = append(missing, i)
		}
	}
	assert.Zero(t, unexpected, "bodies received that were never sent (or came back changed)")
	assert.Zero(t, dups, "bodies received more than once")
	assert.Empty(t, missing, "bodies never received (by index)")
	assert.Len(t, digests, n, "deliveries")
}

// TestNsqjsThroughProxy publishes and consumes with nsqjs, the Node.js
// client, so that Node's OpenSSL stack is the TLS client: it must present
// its certificate, verify the proxy's against the test CA, and every body
// must come back once and unchanged, with and without compression.
func TestNsqjsThroughProxy(t *testing.T) {
	node, script := nsqjsScript(t)
	e := newEnv(t, envConfig{})
	dir := t.TempDir()
	caPath := filepath.Join(dir, "ca.pem")
	require.NoError(t, os.WriteFile(caPath, e.ca.CertPEM(), 0o644))
	leaf, err := e.ca.Client("nsqjs-client")
	require.NoError(t, err)
	certPath, keyPath, err := leaf.WriteFiles(dir, "nsqjs-client")
	require.NoError(t, err)
	_, port, err := net.SplitHostPort(e.addr)
	require.NoError(t, err)

	const count = 2000
	cases := []struct {
		name        string
		compression string
		address     string
		tlsMax      string // "": Node's default, TLS 1.3
		inflater    string // nsqjs's decompression stream once running
		nsqdLog     string // what nsqd logs when the connection upgrades
	}{
		{"plain", "", e.addr, "", "", ""},
		{"snappy", "snappy", e.addr, "", "UnsnappyStream", "upgrading connection to snappy"},
		// By name, so that Node checks the certificate's DNS SAN rather
		// than its IP SAN.
		{"deflate", "deflate", net.JoinHostPort("localhost", port), "", "InflateRaw",
			"upgrading connection to deflate (level 6)"},
		{"TLS 1.2", "", e.addr, "TLSv1.2", "", ""},
		{"TLS 1.2 deflate", "deflate", e.addr, "TLSv1.2", "InflateRaw",
			"upgrading connection to deflate (level 6)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			topic := "nsqjs_" + strings.NewReplacer(" ", "_", ".", "").Replace(tc.name)
			res, stderr, runErr := runNsqjs(t, node, script, nsqjsSettings{
				Address: tc.address, CA: caPath, Cert: certPath, Key: keyPath,
				Topic: topic, Count: count, Compression: tc.compression, TLSMax: tc.tlsMax,
			})
			wantNode, wantGo := "TLSv1.3", "TLS 1.3"
			if tc.tlsMax == "TLSv1.2" {
				wantNode, wantGo = "TLSv1.2", "TLS 1.2"
			}
			require.NoError(t, runErr, "pubsub.js failed: %s\nstderr:\n%s", res.errorText(), stderr)
			require.True(t, res.OK)

			assertEachOnce(t, topic, count, res.Digests)
			assert.Equal(t, count, res.Received)
			assert.Zero(t, res.Unexpected)
			assert.Equal(t, 1, res.MaxAttempts, "a message was delivered more than once")

			require.NotNil(t, res.Writer)
			require.Len(t, res.Readers, 1)
			for _, c := range append([]nsqjsConn{*res.Writer}, res.Readers...) {
				assert.True(t, c.TLSv1, "%+v", c)
				assert.Equal(t, wantNode, c.TLSProtocol)
				assert.True(t, c.Authorized, "Node did not verify the proxy's certificate")
				assert.Equal(t, "1.3.0", c.NsqdVersion)
				assert.Equal(t, tc.compression == "snappy", c.Snappy)
				assert.Equal(t, tc.compression == "deflate", c.Deflate)
				assert.Equal(t, tc.inflater, c.Inflater)
				require.NotEmpty(t, c.LocalAddr)

				// The proxy verified this very connection's certificate...
				ok := e.waitAudit(map[string]any{"event": "handshake", "outcome": "ok",
					"remote_addr": c.LocalAddr})
				assert.Equal(t, "nsqjs-client", ok["client_cn"])
				assert.Equal(t, wantGo, ok["tls_version"])
				assert.Equal(t, false, ok["resumed"])
				assert.Equal(t, "test root", issuerCN(ok["client_issuer"]))
				// ...and nsqd ran the compression the client asked for on
				// the proxy's plaintext connection for it, and no TLS.
				upstream, _ := ok["upstream_local_addr"].(string)
				require.NotEmpty(t, upstream)
				log := e.nsqd.Log()
				assert.NotContains(t, log, "["+upstream+"] upgrading connection to TLS")
				if tc.nsqdLog == "" {
					assert.NotContains(t, log, "["+upstream+"] upgrading connection to")
				} else {
					assert.Contains(t, log, "["+upstream+"] "+tc.nsqdLog)
				}
				e.waitAudit(map[string]any{"event": "close", "remote_addr": c.LocalAddr,
					"client_cn": "nsqjs-client"})
			}
		})
	}

	refusals := []struct {
		name, tlsMax string
		clientErr    []string // nsqjs's error names one of these
	}{
		// TLS 1.3: the client has finished its side of the handshake when
		// the proxy's certificate_required alert arrives.
		{"no client certificate", "", []string{"certificate required", "CERTIFICATE_REQUIRED"}},
		{"no client certificate TLS 1.2", "TLSv1.2",
			[]string{"bad certificate", "BAD_CERTIFICATE", "handshake failure"}},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			before := strings.Count(e.nsqd.Log(), "TCP: new client(")
			res, stderr, runErr := runNsqjs(t, node, script, nsqjsSettings{
				Address: e.addr, CA: caPath, Topic: "nsqjs_refused", Mode: "publish",
				TLSMax: tc.tlsMax,
			})
			require.Error(t, runErr, "nsqjs without a certificate was let in: %+v", res)
			assert.False(t, res.OK)
			assert.Zero(t, res.Published)
			require.NotNil(t, res.Error, "stderr:\n%s", stderr)
			t.Logf("nsqjs error: %s", res.errorText())
			assert.True(t, containsAny(res.errorText(), tc.clientErr...),
				"nsqjs's error %q names none of %q", res.errorText(), tc.clientErr)
			require.NotNil(t, res.Writer)
			require.NotEmpty(t, res.Writer.LocalAddr)

			failed := e.waitAudit(map[string]any{"event": "handshake",
				"remote_addr": res.Writer.LocalAddr})
			assert.Equal(t, "failed", failed["outcome"])
			assert.Equal(t, "no_client_cert", failed["reason"])
			assert.Nil(t, failed["client_cn"])
			assert.Equal(t, before, strings.Count(e.nsqd.Log(), "TCP: new client("),
				"nsqd saw a connection for a refused client:\n%s", e.nsqd.Log())
		})
	}

	t.Run("proxy certificate from another CA", func(t *testing.T) {
		other, err := testpki.NewCA("other root")
		require.NoError(t, err)
		otherPath := filepath.Join(dir, "other-ca.pem")
		require.NoError(t, os.WriteFile(otherPath, other.CertPEM(), 0o644))
		res, stderr, runErr := runNsqjs(t, node, script, nsqjsSettings{
			Address: e.addr, CA: otherPath, Cert: certPath, Key: keyPath,
			Topic: "nsqjs_untrusted", Mode: "publish",
		})
		require.Error(t, runErr, "nsqjs accepted a proxy certificate it cannot verify: %+v", res)
		require.NotNil(t, res.Error, "stderr:\n%s", stderr)
		t.Logf("nsqjs error: %s", res.errorText())
		assert.Equal(t, "UNABLE_TO_VERIFY_LEAF_SIGNATURE", res.Error.Code)

		stats, err := e.nsqd.Stats(context.Background())
		require.NoError(t, err)
		for _, topic := range stats.Topics {
			assert.NotEqual(t, "nsqjs_untrusted", topic.TopicName,
				"nsqjs published although it could not verify the proxy")
		}
	})
}

// issuerCN picks CN=... out of an audit line's client_issuer.
func issuerCN(issuer any) string {
	s, _ := issuer.(string)
	for _, part := range strings.Split(s, ",") {
		if cn, ok := strings.CutPrefix(part, "CN="); ok {
			return cn
		}
	}
	return s
}
