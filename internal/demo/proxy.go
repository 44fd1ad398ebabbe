package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// proxyProc is the nsqtls-proxy subprocess.
type proxyProc struct {
	addr      string
	logPath   string
	auditPath string
	cmd       *exec.Cmd
	done      chan struct{} // closed when the process has exited
}

// errPortTaken means the free port we picked was taken before the proxy
// could bind it; picking another one is worth a try.
var errPortTaken = errors.New("port taken")

func (d *demo) startProxy() error {
	for attempt := 1; ; attempt++ {
		err := d.launchProxy()
		if err == nil || !errors.Is(err, errPortTaken) || attempt == 3 {
			return err
		}
		d.step("port was taken meanwhile; trying another")
	}
}

func (d *demo) launchProxy() error {
	addr, err := freeLoopbackAddr()
	if err != nil {
		return err
	}
	p := &proxyProc{
		addr:      addr,
		logPath:   filepath.Join(d.dir, "proxy.log"),
		auditPath: filepath.Join(d.dir, "audit.log"),
	}
	args := []string{
		"--tcp-address=" + addr,
		"--upstream-tcp-address=" + d.nsqd.TCPAddr,
		"--tls-cert=" + d.pki.serverCert,
		"--tls-key=" + d.pki.serverKey,
		"--tls-root-ca-file=" + d.pki.caPath,
		"--audit-log=" + p.auditPath,
	}
	d.step("starting nsqtls-proxy (stderr to %s):\n           nsqtls-proxy %s",
		p.logPath, strings.Join(args, " \\\n             "))
	if err := p.start(d.proxyBin(), args); err != nil {
		return err
	}
	d.proxy = p
	d.atCleanup(p.kill)
	return d.waitProxyReady(p)
}

// freeLoopbackAddr picks a free port on 127.0.0.1 by listening on port 0.
func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

func (p *proxyProc) start(bin string, args []string) error {
	logFile, err := os.Create(p.logPath)
	if err != nil {
		return err
	}
	defer logFile.Close() // the child has its own descriptor
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("start nsqtls-proxy: %w", err)
	}
	p.done = make(chan struct{})
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	return nil
}

// waitProxyReady waits for the proxy to say it has learned nsqd's
// settings. Clients are refused before that; the first client connection
// retries too, in case the log wording changes.
func (d *demo) waitProxyReady(p *proxyProc) error {
	const want = "learned nsqd settings"
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		log := p.log()
		select {
		case <-p.done:
			if strings.Contains(log, "address already in use") {
				return errPortTaken
			}
			return fmt.Errorf("nsqtls-proxy exited at start with status %d", p.exitCode())
		default:
		}
		if strings.Contains(log, want) {
			d.step("proxy listening on %s and has learned nsqd's settings", p.addr)
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.step("proxy has not logged %q after 10s; trying clients anyway", want)
	return nil
}

func (p *proxyProc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

func (p *proxyProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proxyProc) exitCode() int { return p.cmd.ProcessState.ExitCode() }

// terminate sends SIGTERM and waits for the proxy to drain and exit. It
// kills the proxy if it takes longer than timeout.
func (p *proxyProc) terminate(timeout time.Duration) (int, error) {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !p.exited() {
		return -1, fmt.Errorf("SIGTERM nsqtls-proxy: %w", err)
	}
	select {
	case <-p.done:
		return p.exitCode(), nil
	case <-time.After(timeout):
		p.kill()
		return p.exitCode(), fmt.Errorf("nsqtls-proxy did not exit within %v of SIGTERM; killed", timeout)
	}
}

// kill ends the proxy at once if it still runs.
func (p *proxyProc) kill() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}
