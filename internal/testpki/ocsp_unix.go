//go:build unix

package testpki

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// OCSPResponder is a running `openssl ocsp` responder over an OpenSSLCA's
// index. openssl reads the index only at start: restart it after a change.
type OCSPResponder struct {
	URL string
	cmd *exec.Cmd
	log string
}

// StartOCSP starts a responder that signs with the CA's key, or with
// signer (a delegated responder certificate issued by the CA) if given.
// It answers with a nextUpdate five minutes ahead.
func (o *OpenSSLCA) StartOCSP(signer *Leaf) (*OCSPResponder, error) {
	cert, key := filepath.Join(o.Dir, "ca.pem"), filepath.Join(o.Dir, "ca-key.pem")
	if signer != nil {
		var err error
		if cert, key, err = signer.WriteFiles(o.Dir, "ocsp-signer"); err != nil {
			return nil, err
		}
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	r := &OCSPResponder{URL: "http://127.0.0.1:" + strconv.Itoa(port),
		log: filepath.Join(o.Dir, "ocsp-"+strconv.Itoa(port)+".log")}
	logFile, err := os.Create(r.log)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	// -port takes a bare port and listens on every address; -multi keeps a
	// connection closed without a request from wedging the responder.
	r.cmd = exec.Command("openssl", "ocsp", "-index", filepath.Join(o.Dir, "index.txt"),
		"-port", strconv.Itoa(port), "-rsigner", cert, "-rkey", key,
		"-CA", filepath.Join(o.Dir, "ca.pem"), "-multi", "2", "-nmin", "5")
	r.cmd.Stdout, r.cmd.Stderr = logFile, logFile
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("testpki: start openssl ocsp: %w", err)
	}
	if err := waitAccepting(r.log, 10*time.Second); err != nil {
		r.Stop()
		out, _ := os.ReadFile(r.log)
		return nil, fmt.Errorf("testpki: openssl ocsp: %w\n%s", err, out)
	}
	return r, nil
}

// Stop kills the responder and its worker processes.
func (r *OCSPResponder) Stop() {
	if r.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
	_ = r.cmd.Wait()
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitAccepting waits for openssl's "ACCEPT" line in its log. Probing the
// port instead would upset it: a connection without a request wedges a
// worker, and a malformed request ends one.
func waitAccepting(log string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if out, _ := os.ReadFile(log); strings.Contains(string(out), "ACCEPT") {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no ACCEPT line after %s", timeout)
}
