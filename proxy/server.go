package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nsqtls/nsqtls-proxy/metrics"
	"github.com/nsqtls/nsqtls-proxy/revocation"
	"go.uber.org/zap"
)

// Server is the NSQ mTLS front: one listener for clients, one upstream.
type Server struct {
	opts      *Options
	log       *zap.Logger
	audit     *auditLog
	tlsConfig *tls.Config
	up        *upstream
	ln        net.Listener

	metrics    *metrics.Metrics
	metricsLn  net.Listener        // nil without --metrics-address
	revocation *revocation.Checker // nil without revocation sources
	recheck    chan struct{}       // asks for open connections to be checked again

	nextID atomic.Uint64
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[*clientConn]struct{}
}

// New checks opts, loads the certificates and opens the audit log.
func New(opts *Options, log *zap.Logger) (*Server, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	tlsConfig, err := newTLSConfig(opts)
	if err != nil {
		return nil, err
	}
	perConnection(tlsConfig)
	s := &Server{
		opts:      opts,
		log:       log,
		tlsConfig: tlsConfig,
		up:        newUpstream(opts.UpstreamTCPAddress, opts.UpstreamDialTimeout, log),
		conns:     make(map[*clientConn]struct{}),
		recheck:   make(chan struct{}, 1),
		metrics:   metrics.New(),
	}
	if s.revocation, err = s.newRevocation(); err != nil {
		return nil, err
	}
	if s.revocation != nil {
		s.metrics.CounterFunc("nsqtls_crl_reload_failures_total",
			"CRL reloads and fetches that failed, leaving the last good CRL in force.",
			func() float64 { return float64(s.revocation.ReloadFailures()) })
		s.metrics.GaugeFunc("nsqtls_crl_stale_issuers",
			"Issuers whose CRL is past its nextUpdate (and grace): their clients are refused.",
			func() float64 { return float64(s.revocation.StaleCRLs()) })
	}
	if s.audit, err = openAuditLog(opts.AuditLog, log); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) newRevocation() (*revocation.Checker, error) {
	mode, err := revocation.ParseOCSPMode(s.opts.OCSP)
	if err != nil {
		return nil, err
	}
	_, issuers, err := loadCABundle(s.opts.TLSRootCAFile)
	if err != nil {
		return nil, err
	}
	checker, err := revocation.New(revocation.Config{
		CRLFiles:                s.opts.CRLFiles,
		CRLURLs:                 s.opts.CRLURLs,
		FetchDistributionPoints: s.opts.CRLFetchDistributionPoints,
		StaleGrace:              s.opts.CRLStaleGrace,
		Issuers:                 issuers,
		OCSP:                    mode,
		OCSPResponderURL:        s.opts.OCSPResponderURL,
		OCSPTimeout:             s.opts.OCSPTimeout,
		OnChange:                s.requestRecheck,
		Log:                     s.log,
	})
	if err != nil || !checker.Enabled() {
		return nil, err
	}
	return checker, nil
}

// Reload re-reads the revocation sources now, as SIGHUP asks.
func (s *Server) Reload() {
	if s.revocation != nil {
		s.revocation.Reload(true)
	}
}

// Listen binds the client listener; Addr is valid after it returns.
func (s *Server) Listen() error {
	if s.opts.UnsafeUpstream && !isLoopbackAddr(s.opts.UpstreamTCPAddress) {
		s.log.Warn("UNSAFE: nsqd is reached over a non-loopback address; the hop to nsqd is "+
			"plaintext and anyone on that network can read and inject messages",
			zap.String(FieldUpstreamAddr, s.opts.UpstreamTCPAddress))
	}
	ln, err := net.Listen("tcp", s.opts.TCPAddress)
	if err != nil {
		return fmt.Errorf("proxy: listen: %w", err)
	}
	if s.opts.MetricsAddress != "" {
		if s.metricsLn, err = net.Listen("tcp", s.opts.MetricsAddress); err != nil {
			ln.Close()
			return fmt.Errorf("proxy: listen for metrics: %w", err)
		}
	}
	s.ln = ln
	return nil
}

// Metrics are the server's metrics, also served at --metrics-address.
func (s *Server) Metrics() *metrics.Metrics { return s.metrics }

// MetricsAddr is where metrics are served, nil when they are not.
func (s *Server) MetricsAddr() net.Addr {
	if s.metricsLn == nil {
		return nil
	}
	return s.metricsLn.Addr()
}

// Addr is the address clients connect to.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts clients until ctx ends, then stops accepting, lets open
// connections finish for up to the drain timeout, closes the rest and
// returns nil.
func (s *Server) Serve(ctx context.Context) error {
	if s.ln == nil {
		return errors.New("proxy: Serve called before Listen")
	}
	defer s.audit.Close()
	// Background work lives until Serve returns, after the drain.
	bgCtx, stopBackground := context.WithCancel(context.Background())
	var bg sync.WaitGroup
	defer func() {
		stopBackground()
		bg.Wait()
	}()
	bg.Go(func() { s.up.watch(bgCtx) })
	if s.metricsLn != nil {
		bg.Go(func() {
			if err := s.metrics.Serve(bgCtx, s.metricsLn); err != nil {
				s.log.Error("metrics server stopped", zap.Error(err))
			}
		})
	}
	if s.revocation != nil {
		bg.Go(func() { s.revocation.Run(bgCtx) })
		bg.Go(func() { s.recheckLoop(bgCtx) })
	}

	s.log.Info("listening", zap.String(FieldListener, listenerNSQD),
		zap.Stringer("addr", s.ln.Addr()), zap.String(FieldUpstreamAddr, s.opts.UpstreamTCPAddress))
	stopClosing := context.AfterFunc(ctx, func() { s.ln.Close() })
	defer stopClosing()
	err := s.acceptLoop(ctx)
	s.drain()
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// WaitReady blocks until the proxy has learned nsqd's settings and can
// answer clients, or ctx ends.
func (s *Server) WaitReady(ctx context.Context) error {
	return s.up.waitForSettings(ctx)
}

// Run is Listen followed by Serve.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Listen(); err != nil {
		return err
	}
	return s.Serve(ctx)
}

func (s *Server) acceptLoop(ctx context.Context) error {
	var backoff time.Duration
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) ||
				errors.Is(err, syscall.ENFILE) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", zap.Error(err))
				sleep(ctx, backoff)
				continue
			}
			return fmt.Errorf("proxy: accept: %w", err)
		}
		backoff = 0
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(ctx, conn)
		}()
	}
}

// drain waits for open connections up to the drain timeout, then closes
// what is left.
func (s *Server) drain() {
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	n := s.openConns()
	if n > 0 {
		s.log.Info("draining connections", zap.Int("open", n),
			zap.Duration("timeout", s.opts.DrainTimeout))
	}
	t := time.NewTimer(s.opts.DrainTimeout)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	s.mu.Lock()
	for c := range s.conns {
		c.close(ReasonShutdown)
	}
	s.mu.Unlock()
	<-done
}

func (s *Server) openConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *Server) track(c *clientConn) {
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
}

func (s *Server) untrack(c *clientConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

func (s *Server) requestRecheck() {
	select {
	case s.recheck <- struct{}{}:
	default:
	}
}

// recheckLoop checks open connections again whenever the revocation state
// may have changed, until ctx ends. The CRL pass runs at once every time;
// the OCSP pass, which may wait on responders, runs beside it, one at a
// time, and never delays a CRL pass.
func (s *Server) recheckLoop(ctx context.Context) {
	var ocspPass sync.WaitGroup
	defer ocspPass.Wait()
	var running atomic.Bool
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.recheck:
			s.sweepCRLs()
			if running.CompareAndSwap(false, true) {
				ocspPass.Go(func() {
					defer running.Store(false)
					s.sweepAll(ctx)
				})
			}
		}
	}
}

// admitted lists the connections admitted so far.
func (s *Server) admitted() []*clientConn {
	s.mu.Lock()
	defer s.mu.Unlock()
	conns := make([]*clientConn, 0, len(s.conns))
	for c := range s.conns {
		if c.admittedChains() != nil {
			conns = append(conns, c)
		}
	}
	return conns
}

// sweepCRLs closes every admitted connection that the CRLs in force
// revoke; it waits on nothing.
func (s *Server) sweepCRLs() {
	for _, c := range s.admitted() {
		if r := s.recheckCRLs(c.admittedChains()); r.Status == revocation.Revoked {
			s.disconnectRevoked(c, r)
		}
	}
}

// sweepAll runs every check, OCSP included, on every admitted connection,
// 16 at a time, until done or ctx ends.
func (s *Server) sweepAll(ctx context.Context) {
	const lookupsAtOnce = 16
	sem := make(chan struct{}, lookupsAtOnce)
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, c := range s.admitted() {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Go(func() {
			defer func() { <-sem }()
			r := s.checkRevocation(ctx, c.admittedChains())
			if r.Status == revocation.Revoked {
				s.disconnectRevoked(c, r)
			}
		})
	}
}

func (s *Server) disconnectRevoked(c *clientConn, r revocation.Result) {
	if c.isClosed() {
		return // the other pass got there first
	}
	s.audit.revokedDisconnect(c, r)
	s.metrics.RevokedDisconnects.Inc()
	s.log.Warn("closing a connection whose certificate was revoked",
		zap.Uint64(FieldConnID, c.id), zap.String(FieldRemoteAddr, c.remoteAddr),
		zap.String(FieldClientCN, c.leaf.Subject.CommonName), zap.String(FieldDetail, r.Detail))
	c.close(ReasonRevoked)
}

// checkRevocation checks every verified chain. A revoked or undecided
// chain decides at once; an OCSP soft-fail is reported only when no other
// chain says worse.
func (s *Server) checkRevocation(ctx context.Context,
	chains [][]*x509.Certificate) revocation.Result {
	var soft revocation.Result
	if s.revocation == nil {
		return soft
	}
	for _, chain := range chains {
		r := s.revocation.Check(ctx, chain)
		if r.Status != revocation.Good {
			return r
		}
		if r.SoftFailed && !soft.SoftFailed {
			soft = r
		}
	}
	return soft
}
