package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nsqtls/nsqtls-proxy/revocation"
	"go.uber.org/zap"
)

// clientConn is one client from accept to close.
type clientConn struct {
	id         uint64
	raw        net.Conn
	remoteAddr string
	start      time.Time

	leaf       *x509.Certificate
	revocation revocation.Result    // what the handshake's check found
	checked    *tls.ConnectionState // the state the handshake's checks saw
	fromClient atomic.Int64
	toClient   atomic.Int64

	mu       sync.Mutex // guards tls, upstream and chains
	tls      *tls.Conn
	upstream net.Conn
	chains   [][]*x509.Certificate // set once the connection is admitted

	// writeTimeout bounds each write to the client: nsqd's heartbeat
	// interval for this client, which is also nsqd's own write deadline.
	writeTimeout time.Duration

	closeOnce   sync.Once
	closeReason Reason
	closed      bool // guarded by mu: set by close, seen by setUpstream
}

// close ends both sides once; the first reason given is the one recorded.
func (c *clientConn) close(reason Reason) {
	c.closeOnce.Do(func() {
		c.closeReason = reason
		c.mu.Lock()
		c.closed = true
		tc, up := c.tls, c.upstream
		c.mu.Unlock()
		if tc != nil {
			tc.Close()
		} else {
			c.raw.Close()
		}
		if up != nil {
			up.Close()
		}
	})
}

func (c *clientConn) setTLS(tc *tls.Conn) {
	c.mu.Lock()
	c.tls = tc
	c.mu.Unlock()
}

// admittedChains returns the verified chains of an admitted connection,
// nil before that.
func (c *clientConn) admittedChains() [][]*x509.Certificate {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.chains
}

func (c *clientConn) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// setUpstream attaches up to c, or closes up and reports false when c was
// closed meanwhile (a revocation sweep, a shutdown).
func (c *clientConn) setUpstream(up net.Conn) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		up.Close()
		return false
	}
	c.upstream = up
	return true
}

// openingFailure is a refused opening, ready for the audit log.
type openingFailure struct {
	reason Reason
	err    error
	cert   *x509.Certificate
	state  *tls.ConnectionState
}

func (s *Server) handle(ctx context.Context, raw net.Conn) {
	c := &clientConn{
		id:         s.nextID.Add(1),
		raw:        raw,
		remoteAddr: raw.RemoteAddr().String(),
		start:      time.Now(),
	}
	s.track(c)
	defer s.untrack(c)

	// An opening under way finishes (or times out) even when shutdown
	// begins; the drain covers it.
	if f := s.open(context.WithoutCancel(ctx), c); f != nil {
		s.audit.handshakeFailed(c, f.reason, f.err, f.cert, f.state)
		s.metrics.Handshakes.WithLabelValues(OutcomeFailed, string(f.reason)).Inc()
		// A peer that leaves mid-opening (a port probe, a health check)
		// is audited but is not news for the human log.
		level := zap.InfoLevel
		if f.reason == ReasonClientClosed {
			level = zap.DebugLevel
		}
		s.log.Log(level, "client refused", zap.Uint64(FieldConnID, c.id),
			zap.String(FieldRemoteAddr, c.remoteAddr), zap.String(FieldReason, string(f.reason)),
			zap.Error(f.err))
		c.close(f.reason)
		return
	}
	expiry := time.AfterFunc(time.Until(chainsExpiry(c.admittedChains())), func() {
		s.log.Info("closing a connection whose certificate expired",
			zap.Uint64(FieldConnID, c.id), zap.String(FieldClientCN, c.leaf.Subject.CommonName))
		c.close(ReasonExpired)
	})
	s.metrics.Handshakes.WithLabelValues(OutcomeOK, "").Inc()
	if c.revocation.SoftFailed {
		s.metrics.OCSPSoftFails.Inc()
	}
	s.relay(c)
	expiry.Stop()
	s.audit.closed(c, c.closeReason)
	s.log.Debug("connection closed", zap.Uint64(FieldConnID, c.id),
		zap.String(FieldReason, string(c.closeReason)))
}

// open runs the opening: plaintext IDENTIFY, feature answer, TLS handshake,
// upstream IDENTIFY and the OK inside TLS. On success c is ready to relay.
func (s *Server) open(ctx context.Context, c *clientConn) *openingFailure {
	_ = c.raw.SetDeadline(c.start.Add(s.opts.TLSHandshakeTimeout))
	br := getOpeningReader(c.raw)
	id, err := readOpening(br)
	putOpeningReader(br)
	if err != nil {
		return s.refusePlaintext(c, err)
	}
	c.writeTimeout = heartbeatInterval(id.HeartbeatInterval)
	settings := s.up.settings.Load()
	if settings == nil {
		return s.refusePlaintext(c, &openingError{code: "E_UNAVAILABLE",
			reason: ReasonUpstreamUnavailable, msg: "nsqtls-proxy cannot reach nsqd yet; retry later"})
	}
	promised := settings.promise(id)
	answer, _ := json.Marshal(promised)
	if err := writeFrame(c.raw, frameTypeResponse, answer); err != nil {
		return &openingFailure{reason: ReasonClientClosed, err: err}
	}

	nb := newNBConn(c.raw)
	nb.config = s.connTLSConfig(c)
	tc := tls.Server(nb, s.tlsConfig)
	c.setTLS(tc)
	if err := tc.HandshakeContext(ctx); err != nil {
		var notTLS tls.RecordHeaderError
		if errors.As(err, &notTLS) && notTLS.Conn != nil {
			// Plaintext where the ClientHello was due: say so in plaintext.
			_ = writeFrame(notTLS.Conn, frameTypeError, []byte("E_BAD_PROTOCOL expected a TLS "+
				"handshake after the IDENTIFY answer; "+tlsRequiredHint))
			lingerClose(notTLS.Conn)
		}
		f := handshakeFailure(err)
		if c.checked != nil && len(c.checked.PeerCertificates) > 0 {
			// Our own checks refused it: the chain verified, so say whose.
			f.cert, f.state = c.checked.PeerCertificates[0], c.checked
		}
		return f
	}
	state := tc.ConnectionState()
	c.leaf = state.PeerCertificates[0]
	// From here a revocation sweep sees this connection, and closes it
	// if a CRL changes while nsqd is being dialled.
	c.mu.Lock()
	c.chains = state.VerifiedChains
	c.mu.Unlock()
	if c.revocation.SoftFailed {
		s.log.Warn("OCSP soft-fail: letting the client in", zap.Uint64(FieldConnID, c.id),
			zap.String(FieldClientCN, c.leaf.Subject.CommonName),
			zap.String(FieldDetail, c.revocation.Detail))
	}

	if f := s.connectUpstream(ctx, c, id, promised); f != nil {
		f.cert, f.state = c.leaf, &state
		return f
	}
	if c.isClosed() {
		return &openingFailure{reason: c.closeReason, cert: c.leaf, state: &state,
			err: errors.New("proxy: connection closed during the opening")}
	}
	// No audit line, no admission: the trail is what this proxy is for.
	if err := s.audit.handshakeOK(c, state); err != nil {
		_ = writeFrame(tc, frameTypeError,
			[]byte("E_UNAVAILABLE nsqtls-proxy cannot write its audit log; retry later"))
		return &openingFailure{reason: ReasonAuditFailed, err: err, cert: c.leaf, state: &state}
	}
	// A CRL that changed between the handshake's check and the sweep
	// seeing this connection is caught here, before the OK.
	if r := s.recheckCRLs(state.VerifiedChains); r.Status == revocation.Revoked {
		c.revocation = r
		_ = writeFrame(tc, frameTypeError, []byte("E_UNAUTHORIZED certificate revoked"))
		return &openingFailure{reason: ReasonRevoked, err: r.Err(), cert: c.leaf, state: &state}
	}
	_ = c.raw.SetDeadline(time.Time{})
	// A failed write shows up at once in the relay, which then closes.
	_ = writeFrame(tc, frameTypeResponse, []byte("OK"))
	return nil
}

// recheckCRLs checks chains against the CRLs in force, without fetching.
func (s *Server) recheckCRLs(chains [][]*x509.Certificate) revocation.Result {
	if s.revocation != nil {
		for _, chain := range chains {
			if r := s.revocation.CheckCRLs(chain); r.Status == revocation.Revoked {
				return r
			}
		}
	}
	return revocation.Result{}
}

// connTLSConfig is c's handshake config: the server's, with checks that
// record their findings on c.
func (s *Server) connTLSConfig(c *clientConn) *tls.Config {
	cfg := s.tlsConfig.Clone()
	cfg.GetConfigForClient = nil
	cfg.VerifyConnection = func(state tls.ConnectionState) error {
		c.checked = &state
		if err := verifyConnection(state, nil); err != nil {
			return err
		}
		// The handshake's deadline bounds lookups; a CRL fetch or OCSP
		// request shared with other clients goes on without it.
		ctx, cancel := context.WithDeadline(context.Background(),
			c.start.Add(s.opts.TLSHandshakeTimeout))
		defer cancel()
		c.revocation = s.checkRevocation(ctx, state.VerifiedChains)
		switch c.revocation.Status {
		case revocation.Revoked:
			return &reasonError{reason: ReasonRevoked, err: c.revocation.Err()}
		case revocation.Unknown:
			return &reasonError{reason: ReasonRevocationUnknown, err: c.revocation.Err()}
		}
		return nil
	}
	return cfg
}

// heartbeatInterval is the interval nsqd v1.3.0 uses for a client that
// asked for ms in IDENTIFY: -1 disables heartbeats, 0 means nsqd's
// default of half its 60s --client-timeout.
func heartbeatInterval(ms int) time.Duration {
	switch {
	case ms < 0:
		return 0
	case ms == 0:
		return 30 * time.Second
	}
	return time.Duration(ms) * time.Millisecond
}

func handshakeFailure(err error) *openingFailure {
	f := &openingFailure{reason: handshakeReason(err, time.Now()), err: err}
	var verify *tls.CertificateVerificationError
	if errors.As(err, &verify) && len(verify.UnverifiedCertificates) > 0 {
		f.cert = verify.UnverifiedCertificates[0]
	}
	if f.reason == ReasonNoClientCert {
		f.err = fmt.Errorf("%w (clients such as Go's send none when their certificate "+
			"was not issued by a CA in --tls-root-ca-file)", err)
	}
	return f
}

// refusePlaintext answers a bad opening with an NSQ error frame, if there
// is anyone left to read it.
func (s *Server) refusePlaintext(c *clientConn, err error) *openingFailure {
	var refusal *openingError
	if !errors.As(err, &refusal) {
		return &openingFailure{reason: handshakeReason(err, time.Now()), err: err}
	}
	_ = writeFrame(c.raw, frameTypeError, []byte(refusal.Error()))
	lingerClose(c.raw)
	return &openingFailure{reason: refusal.reason, err: refusal}
}

// lingerClose sends FIN and reads briefly what the client still sends, so
// that closing does not reset the connection before the client has read
// our error frame.
func lingerClose(conn net.Conn) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, _ = io.CopyN(io.Discard, conn, 64<<10)
}

// connectUpstream dials nsqd for a verified client, replays its IDENTIFY
// without tls_v1 and checks nsqd's answer against the promise. Any refusal
// reaches the client as an error frame inside TLS.
func (s *Server) connectUpstream(ctx context.Context, c *clientConn, id *identifyData,
	promised featureResponse) *openingFailure {
	replay := *id
	replay.TLSv1 = false
	body, _ := json.Marshal(&replay)

	up, frameType, data, err := s.up.identify(ctx, body)
	if err != nil {
		s.log.Warn("cannot reach nsqd for a verified client", zap.Uint64(FieldConnID, c.id),
			zap.String(FieldUpstreamAddr, s.opts.UpstreamTCPAddress), zap.Error(err))
		_ = writeFrame(c.tls, frameTypeError,
			[]byte("E_UNAVAILABLE nsqtls-proxy cannot reach nsqd; retry later"))
		return &openingFailure{reason: ReasonUpstreamUnavailable, err: err}
	}
	if !c.setUpstream(up) {
		return &openingFailure{reason: c.closeReason,
			err: errors.New("proxy: connection closed while nsqd was being dialled")}
	}

	if frameType == frameTypeError {
		_ = writeFrame(c.tls, frameTypeError, data)
		return &openingFailure{reason: ReasonUpstreamRejected,
			err: fmt.Errorf("proxy: nsqd refused IDENTIFY: %s", data)}
	}
	if err := checkAnswer(promised, data); err != nil {
		s.up.requestRelearn()
		s.log.Warn("nsqd's answer differs from the proxy's promise; relearning its settings",
			zap.Uint64(FieldConnID, c.id), zap.Error(err))
		_ = writeFrame(c.tls, frameTypeError, []byte("E_IDENTIFY_FAILED nsqtls-proxy: "+
			"nsqd's settings changed during the handshake; reconnect"))
		return &openingFailure{reason: ReasonUpstreamMismatch, err: err}
	}
	return nil
}

// relay copies both ways until either side ends, then closes both.
func (s *Server) relay(c *clientConn) {
	nb := c.tls.NetConn().(*nbConn)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.close(pumpToUpstream(c.upstream, c.tls, nb, &c.fromClient))
	}()
	c.close(pumpToClient(c.tls, c.upstream, &c.toClient, c.writeTimeout))
	<-done
}
