package proxy

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nsqtls/nsqtls-proxy/revocation"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Log field names. The audit log and the human log use the same names for
// the same things, and no others.
const (
	FieldEvent             = "event"
	FieldOutcome           = "outcome"
	FieldReason            = "reason"
	FieldDetail            = "detail"
	FieldListener          = "listener"
	FieldConnID            = "conn_id"
	FieldRemoteAddr        = "remote_addr"
	FieldClientCN          = "client_cn"
	FieldClientSerial      = "client_serial"
	FieldClientIssuer      = "client_issuer"
	FieldClientSANs        = "client_sans"
	FieldClientFingerprint = "client_fingerprint_sha256"
	FieldTLSVersion        = "tls_version"
	FieldCipherSuite       = "cipher_suite"
	FieldResumed           = "resumed"
	FieldUpstreamAddr      = "upstream_addr"
	FieldUpstreamLocalAddr = "upstream_local_addr"
	FieldDurationMS        = "duration_ms"
	FieldBytesFromClient   = "bytes_from_client"
	FieldBytesToClient     = "bytes_to_client"
	FieldRevocationReason  = "revocation_reason"
	FieldRevokedAt         = "revoked_at"
	FieldRevocationSoft    = "revocation_soft_fail"
	FieldRevocationDetail  = "revocation_detail"
)

// Audit events and outcomes.
const (
	EventHandshake = "handshake"
	EventClose     = "close"
	// EventRevokedDisconnect: an open connection was closed because its
	// certificate was found revoked.
	EventRevokedDisconnect = "revoked_disconnect"
	OutcomeOK              = "ok"
	OutcomeFailed          = "failed"
)

// listenerNSQD names the NSQ TCP listener in audit lines.
const listenerNSQD = "nsqd_tcp"

// auditLog writes one JSON object per event. A failed write is reported
// to the human log and returned, so that a connection is not admitted
// without its audit line.
type auditLog struct {
	core   zapcore.Core
	closer io.Closer
	log    *zap.Logger // the human log, for write failures
}

func openAuditLog(path string, log *zap.Logger) (*auditLog, error) {
	var sink zapcore.WriteSyncer = zapcore.Lock(os.Stdout)
	var closer io.Closer = io.NopCloser(nil)
	if path != "" && path != "-" {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("proxy: audit log: %w", err)
		}
		sink, closer = zapcore.Lock(f), f
	}
	return newAuditLog(sink, closer, log), nil
}

func newAuditLog(sink zapcore.WriteSyncer, closer io.Closer, log *zap.Logger) *auditLog {
	enc := zapcore.NewJSONEncoder(zapcore.EncoderConfig{
		TimeKey:        "ts",
		EncodeTime:     zapcore.RFC3339NanoTimeEncoder,
		EncodeDuration: zapcore.MillisDurationEncoder,
		LineEnding:     zapcore.DefaultLineEnding,
	})
	return &auditLog{core: zapcore.NewCore(enc, sink, zapcore.InfoLevel), closer: closer, log: log}
}

func (a *auditLog) Close() error {
	_ = a.core.Sync()
	return a.closer.Close()
}

func (a *auditLog) write(fields ...zap.Field) error {
	err := a.core.Write(zapcore.Entry{Level: zapcore.InfoLevel, Time: time.Now()}, fields)
	if err != nil {
		a.log.Error("audit log write failed", zap.Error(err))
		return fmt.Errorf("proxy: audit log: %w", err)
	}
	return nil
}

// certFields describes a client certificate. On a failed handshake the
// certificate is the one presented, unverified.
func certFields(cert *x509.Certificate) []zap.Field {
	if cert == nil {
		return nil
	}
	sum := sha256.Sum256(cert.Raw)
	return []zap.Field{
		zap.String(FieldClientCN, cert.Subject.CommonName),
		zap.String(FieldClientSerial, cert.SerialNumber.Text(16)),
		zap.String(FieldClientIssuer, cert.Issuer.String()),
		zap.Strings(FieldClientSANs, sanList(cert)),
		zap.String(FieldClientFingerprint, hex.EncodeToString(sum[:])),
	}
}

// sanList writes subject alternative names as openssl does: DNS:, IP:,
// URI:, email:.
func sanList(cert *x509.Certificate) []string {
	sans := make([]string, 0, len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.URIs)+
		len(cert.EmailAddresses))
	for _, n := range cert.DNSNames {
		sans = append(sans, "DNS:"+n)
	}
	for _, ip := range cert.IPAddresses {
		sans = append(sans, "IP:"+ip.String())
	}
	for _, u := range cert.URIs {
		sans = append(sans, "URI:"+u.String())
	}
	for _, e := range cert.EmailAddresses {
		sans = append(sans, "email:"+e)
	}
	return sans
}

func tlsFields(state tls.ConnectionState) []zap.Field {
	return []zap.Field{
		zap.String(FieldTLSVersion, tls.VersionName(state.Version)),
		zap.String(FieldCipherSuite, tls.CipherSuiteName(state.CipherSuite)),
		zap.Bool(FieldResumed, state.DidResume),
	}
}

func connFields(c *clientConn) []zap.Field {
	return []zap.Field{
		zap.String(FieldListener, listenerNSQD),
		zap.Uint64(FieldConnID, c.id),
		zap.String(FieldRemoteAddr, c.remoteAddr),
	}
}

func (a *auditLog) handshakeOK(c *clientConn, state tls.ConnectionState) error {
	fields := append(connFields(c), zap.String(FieldEvent, EventHandshake),
		zap.String(FieldOutcome, OutcomeOK))
	fields = append(fields, certFields(c.leaf)...)
	fields = append(fields, tlsFields(state)...)
	fields = append(fields, zap.String(FieldUpstreamLocalAddr, c.upstream.LocalAddr().String()))
	fields = append(fields, revocationFields(c.revocation)...)
	return a.write(fields...)
}

// handshakeFailed records a refused opening. cert and state are what is
// known at the point of failure: nil and nil before TLS.
func (a *auditLog) handshakeFailed(c *clientConn, reason Reason, err error,
	cert *x509.Certificate, state *tls.ConnectionState) {
	fields := append(connFields(c), zap.String(FieldEvent, EventHandshake),
		zap.String(FieldOutcome, OutcomeFailed), zap.String(FieldReason, string(reason)),
		zap.String(FieldDetail, err.Error()))
	fields = append(fields, certFields(cert)...)
	if state != nil {
		fields = append(fields, tlsFields(*state)...)
	}
	fields = append(fields, revocationFields(c.revocation)...)
	_ = a.write(fields...)
}

func revocationFields(r revocation.Result) []zap.Field {
	if r.SoftFailed {
		return []zap.Field{zap.Bool(FieldRevocationSoft, true),
			zap.String(FieldRevocationDetail, r.Detail)}
	}
	if r.Status != revocation.Revoked {
		return nil
	}
	return []zap.Field{zap.String(FieldRevocationReason, r.Entry.Reason),
		zap.Time(FieldRevokedAt, r.Entry.RevokedAt)}
}

// revokedDisconnect records an open connection closed for revocation.
func (a *auditLog) revokedDisconnect(c *clientConn, r revocation.Result) {
	fields := append(connFields(c), zap.String(FieldEvent, EventRevokedDisconnect),
		zap.String(FieldReason, string(ReasonRevoked)), zap.String(FieldDetail, r.Detail))
	fields = append(fields, certFields(c.leaf)...)
	fields = append(fields, revocationFields(r)...)
	_ = a.write(fields...)
}

func (a *auditLog) closed(c *clientConn, reason Reason) {
	fields := append(connFields(c), zap.String(FieldEvent, EventClose),
		zap.String(FieldReason, string(reason)))
	fields = append(fields, certFields(c.leaf)...)
	fields = append(fields,
		zap.Int64(FieldDurationMS, time.Since(c.start).Milliseconds()),
		zap.Int64(FieldBytesFromClient, c.fromClient.Load()),
		zap.Int64(FieldBytesToClient, c.toClient.Load()))
	_ = a.write(fields...)
}

// NewLogger builds the human log: zap's console encoding on stderr.
func NewLogger(level string) (*zap.Logger, error) {
	lvl, err := parseLogLevel(level)
	if err != nil {
		return nil, err
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.Encoding = "console"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.Sampling = nil
	cfg.DisableStacktrace = true
	cfg.EncoderConfig.EncodeDuration = zapcore.StringDurationEncoder
	return cfg.Build()
}

func parseLogLevel(s string) (zapcore.Level, error) {
	switch s {
	case "debug", "info", "warn", "error":
		return zapcore.ParseLevel(s)
	}
	return 0, fmt.Errorf("options: --log-level %q is not valid; write debug, info, warn or error", s)
}
