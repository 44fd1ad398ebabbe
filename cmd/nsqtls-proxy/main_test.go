package main

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nsqtls/nsqtls-proxy/internal/nsqdtest"
	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBadFlagsExit2(t *testing.T) {
	base := []string{"--tls-cert=a", "--tls-key=b", "--tls-root-ca-file=c",
		"--upstream-tcp-address=127.0.0.1:4150"}
	for _, extra := range [][]string{
		{"--tls-client-auth-policy=requireverify"},
		{"--tls-min-version=tls1.1"},
		{"--upstream-tcp-address=10.0.0.1:4150"},
		{"--no-such-flag"},
		{"stray-argument"},
	} {
		assert.Equal(t, 2, run(append(base, extra...)), "args %q", extra)
	}
	assert.Equal(t, 0, run([]string{"--version"}))
}

// TestBinarySignals builds the real binary, runs it from a config file
// against a real nsqd, and checks that SIGTERM makes it exit 0.
func TestBinarySignals(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "nsqtls-proxy")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "%s", out)

	n, err := nsqdtest.Start(filepath.Join(dir, "nsqd"))
	require.NoError(t, err)
	defer n.Stop()
	ca, err := testpki.NewCA("cmd test")
	require.NoError(t, err)
	server, err := ca.Server("proxy")
	require.NoError(t, err)
	cert, key, err := server.WriteFiles(dir, "server")
	require.NoError(t, err)
	caPath := filepath.Join(dir, "ca.pem")
	require.NoError(t, os.WriteFile(caPath, ca.CertPEM(), 0o644))
	config := filepath.Join(dir, "proxy.toml")
	require.NoError(t, os.WriteFile(config, []byte(strings.Join([]string{
		`tcp_address = "127.0.0.1:0"`,
		`upstream_tcp_address = "` + n.TCPAddr + `"`,
		`tls_cert = "` + cert + `"`,
		`tls_key = "` + key + `"`,
		`tls_root_ca_file = "` + caPath + `"`,
		`drain_timeout = "2s"`,
	}, "\n")), 0o644))

	cmd := exec.Command(bin, "--config="+config, "--audit-log="+filepath.Join(dir, "audit.log"))
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	defer func() { _ = cmd.Process.Kill() }()
	waitForLine(t, stderr, "learned nsqd settings")

	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			t.Fatalf("exit status %d after SIGTERM", exitErr.ExitCode())
		}
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("no exit within 10s of SIGTERM")
	}
}

func waitForLine(t *testing.T, r interface{ Read([]byte) (int, error) }, text string) {
	t.Helper()
	found := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if strings.Contains(sc.Text(), text) {
				found <- true
				for sc.Scan() {
				}
				return
			}
		}
		found <- false
	}()
	select {
	case ok := <-found:
		require.True(t, ok, "the proxy ended before logging %q", text)
	case <-time.After(15 * time.Second):
		t.Fatalf("the proxy did not log %q", text)
	}
}
