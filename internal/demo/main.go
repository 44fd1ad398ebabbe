// Command demo is the program behind `make demo`: it builds the real
// nsqtls-proxy and nsqd v1.3.0, makes a throwaway PKI, moves a few thousand
// messages through the proxy with go-nsq clients holding client
// certificates, shows two clients being refused, stops everything and
// prints the audit log and a summary. It exits non-zero when anything is
// wrong, so it doubles as a smoke check.
//
// Set DEMO_KEEP=1 to keep the work directory (certificates, logs, audit log).
package main

import (
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/nsqtls/nsqtls-proxy/internal/nsqdtest"
)

const (
	topic       = "orders"
	channel     = "billing"
	numMessages = 5000
	batchSize   = 100
)

func main() {
	os.Exit(realMain())
}

func realMain() int {
	d := &demo{start: time.Now(), keep: os.Getenv("DEMO_KEEP") == "1"}
	stopSignals := d.handleSignals()
	defer stopSignals()

	err := d.run()
	d.cleanup()
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "\ndemo FAILED: %v\n", err)
		return 1
	case len(d.problems) > 0:
		fmt.Fprintf(os.Stderr, "\ndemo FAILED: %d problem(s):\n", len(d.problems))
		for _, p := range d.problems {
			fmt.Fprintf(os.Stderr, "  - %s\n", p)
		}
		return 1
	}
	fmt.Printf("\ndemo OK in %.1fs\n", time.Since(d.start).Seconds())
	return 0
}

// demo holds everything one run starts and learns.
type demo struct {
	start time.Time
	keep  bool
	root  string // module root
	dir   string // work dir

	pki   *pkiFiles
	nsqd  *nsqdtest.NSQD
	proxy *proxyProc

	traffic      *trafficResult
	refusals     []refusal
	exitCode     int
	readyRetries int // failed first connections while the proxy was not ready

	problems []string

	cleanupMu   sync.Mutex
	cleanups    []func()
	cleanupDone bool
}

func (d *demo) run() error {
	steps := []func() error{
		d.makeWorkDir, d.build, d.makePKI, d.startNSQD, d.startProxy,
		d.moveMessages, d.showRefusals, d.stopAll, d.report,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			d.dumpProxyLog()
			return err
		}
	}
	return nil
}

// step prints a progress line with the time since the start.
func (d *demo) step(format string, args ...any) {
	fmt.Printf("[%5.1fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

// problem records a failed check; the run goes on so the summary is
// complete, and the exit status is non-zero.
func (d *demo) problem(format string, args ...any) {
	d.problems = append(d.problems, fmt.Sprintf(format, args...))
}

// atCleanup registers f to run at exit, last registered first.
func (d *demo) atCleanup(f func()) {
	d.cleanupMu.Lock()
	defer d.cleanupMu.Unlock()
	d.cleanups = append(d.cleanups, f)
}

// cleanup runs the registered functions once; it is safe to call from the
// signal handler while run is still going.
func (d *demo) cleanup() {
	d.cleanupMu.Lock()
	defer d.cleanupMu.Unlock()
	if d.cleanupDone {
		return
	}
	d.cleanupDone = true
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		d.cleanups[i]()
	}
}

// handleSignals cleans up and exits on Ctrl-C or SIGTERM.
func (d *demo) handleSignals() (stop func()) {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	quit := make(chan struct{})
	go func() {
		select {
		case sig := <-sigs:
			fmt.Fprintf(os.Stderr, "\ndemo: %v; stopping what it started\n", sig)
			d.cleanup()
			os.Exit(130)
		case <-quit:
		}
	}()
	return func() {
		signal.Stop(sigs)
		close(quit)
	}
}
