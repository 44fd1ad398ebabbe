package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/nsqtls/nsqtls-proxy/internal/nsqdtest"
	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
)

// makeWorkDir finds the module root, moves there (so that `go tool -n
// nsqd` sees the module) and makes the temp work dir.
func (d *demo) makeWorkDir() error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	if err := os.Chdir(root); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "nsqtls-demo-")
	if err != nil {
		return err
	}
	d.root, d.dir = root, dir
	d.atCleanup(func() {
		if d.keep {
			fmt.Printf("work dir kept (DEMO_KEEP=1): %s\n", dir)
			return
		}
		_ = os.RemoveAll(dir)
	})
	d.step("work dir %s (set DEMO_KEEP=1 to keep it)", dir)
	return nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("go env GOMOD: not inside the nsqtls-proxy module; " +
			"run `make demo` from the repository")
	}
	return filepath.Dir(gomod), nil
}

// build compiles the proxy into the work dir and has the go command build
// (or find in its cache) nsqd v1.3.0.
func (d *demo) build() error {
	d.step("building nsqtls-proxy (go build ./cmd/nsqtls-proxy) ...")
	if out, err := d.goBuild(d.proxyBin(), "./cmd/nsqtls-proxy"); err != nil {
		return fmt.Errorf("go build ./cmd/nsqtls-proxy: %w\n%s", err, out)
	}
	d.step("building nsqd v1.3.0 (go tool -n nsqd; slow only the first time) ...")
	bin, err := nsqdtest.Binary()
	if err != nil {
		return err
	}
	d.step("nsqd binary: %s", bin)
	return nil
}

// goBuild runs `go build -o out pkg` in the module root; cleanup stops it
// and waits for it, so that it cannot write into a removed work dir.
func (d *demo) goBuild(out, pkg string) ([]byte, error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	defer close(done)
	d.atCleanup(func() {
		cancel()
		<-done
	})
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = d.root
	ownProcessGroup(cmd)
	return cmd.CombinedOutput()
}

func (d *demo) proxyBin() string { return filepath.Join(d.dir, "nsqtls-proxy") }

// pkiFiles is the throwaway PKI: one CA the proxy trusts, its server and
// client certificates, and a client certificate from an unrelated CA.
type pkiFiles struct {
	ca                    *testpki.CA
	caPath                string
	serverCert, serverKey string
	writer, reader        *testpki.Leaf
	stranger              *testpki.Leaf // same CN as writer, other CA
}

func (d *demo) makePKI() error {
	d.step("making a throwaway PKI ...")
	ca, err := testpki.NewCA("nsqtls-demo CA")
	if err != nil {
		return err
	}
	other, err := testpki.NewCA("some other CA")
	if err != nil {
		return err
	}
	p := &pkiFiles{ca: ca, caPath: filepath.Join(d.dir, "ca.pem")}
	if err := os.WriteFile(p.caPath, ca.CertPEM(), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(d.dir, "other-ca.pem"), other.CertPEM(), 0o644); err != nil {
		return err
	}
	if err := d.issueAll(p, ca, other); err != nil {
		return err
	}
	d.pki = p
	fmt.Printf("         in %s:\n", d.dir)
	fmt.Println("           ca.pem                            CA the proxy trusts (--tls-root-ca-file)")
	fmt.Println("           server.pem, server-key.pem        proxy server certificate (localhost, 127.0.0.1)")
	fmt.Println("           orders-writer.pem, -key.pem       client CN=orders-writer")
	fmt.Println("           orders-reader.pem, -key.pem       client CN=orders-reader")
	fmt.Println("           stranger.pem, -key.pem            client CN=orders-writer from other-ca.pem")
	return nil
}

func (d *demo) issueAll(p *pkiFiles, ca, other *testpki.CA) error {
	server, err := ca.Server("nsqtls-proxy")
	if err != nil {
		return err
	}
	if p.serverCert, p.serverKey, err = server.WriteFiles(d.dir, "server"); err != nil {
		return err
	}
	issue := func(from *testpki.CA, cn, file string) (*testpki.Leaf, error) {
		leaf, err := from.Client(cn)
		if err != nil {
			return nil, err
		}
		_, _, err = leaf.WriteFiles(d.dir, file)
		return leaf, err
	}
	if p.writer, err = issue(ca, "orders-writer", "orders-writer"); err != nil {
		return err
	}
	if p.reader, err = issue(ca, "orders-reader", "orders-reader"); err != nil {
		return err
	}
	p.stranger, err = issue(other, "orders-writer", "stranger")
	return err
}

func (d *demo) startNSQD() error {
	d.step("starting nsqd v1.3.0 on loopback ...")
	n, err := nsqdtest.Start(filepath.Join(d.dir, "nsqd-data"))
	if err != nil {
		return err
	}
	d.nsqd = n
	d.atCleanup(n.Stop)
	d.step("nsqd listening on %s (TCP, plaintext) and %s (HTTP)", n.TCPAddr, n.HTTPAddr)
	return nil
}

// dumpProxyLog prints the end of the proxy's log after a failure.
func (d *demo) dumpProxyLog() {
	if d.proxy == nil {
		return
	}
	data, err := os.ReadFile(d.proxy.logPath)
	if err != nil || len(data) == 0 {
		return
	}
	lines := bytes.Split(bytes.TrimSpace(data), []byte("\n"))
	fmt.Fprintf(os.Stderr, "\nlast lines of %s:\n", d.proxy.logPath)
	for _, l := range lines[max(0, len(lines)-20):] {
		fmt.Fprintf(os.Stderr, "  %s\n", l)
	}
}
