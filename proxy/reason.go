package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"time"
)

// Reason says in one fixed word why a connection was refused or ended. The
// same words appear in the audit log, in the human log and in tests.
type Reason string

// Reasons for a refused opening or handshake.
const (
	ReasonNoClientCert        Reason = "no_client_cert"
	ReasonUnknownAuthority    Reason = "unknown_authority"
	ReasonExpired             Reason = "expired"
	ReasonNotYetValid         Reason = "not_yet_valid"
	ReasonBadKeyUsage         Reason = "bad_key_usage"
	ReasonBadCertificate      Reason = "bad_certificate"
	ReasonPlaintextRejected   Reason = "plaintext_rejected"
	ReasonBadProtocol         Reason = "bad_protocol"
	ReasonTLSVersion          Reason = "tls_version"
	ReasonClientAlert         Reason = "client_alert"
	ReasonHandshakeFailed     Reason = "tls_handshake_failed"
	ReasonTimeout             Reason = "timeout"
	ReasonUpstreamUnavailable Reason = "upstream_unavailable"
	ReasonUpstreamRejected    Reason = "upstream_rejected"
	ReasonUpstreamMismatch    Reason = "upstream_mismatch"
	ReasonRevoked             Reason = "revoked"
	ReasonRevocationUnknown   Reason = "revocation_unknown"
	ReasonAuditFailed         Reason = "audit_failed"
)

// Reasons for the end of an established connection. ReasonClientClosed and
// ReasonTimeout also end openings.
const (
	ReasonClientClosed   Reason = "client_closed"
	ReasonUpstreamClosed Reason = "upstream_closed"
	ReasonClientError    Reason = "client_error"
	ReasonUpstreamError  Reason = "upstream_error"
	ReasonShutdown       Reason = "shutdown"
)

// certReason maps a certificate verification failure to a Reason. now is
// the verification time, used to tell an expired certificate from one that
// is not valid yet; chain is what the client sent, in case the error does
// not name the certificate.
func certReason(err error, chain []*x509.Certificate, now time.Time) Reason {
	var unknown x509.UnknownAuthorityError
	if errors.As(err, &unknown) {
		return ReasonUnknownAuthority
	}
	var invalid x509.CertificateInvalidError
	if !errors.As(err, &invalid) {
		return ReasonBadCertificate
	}
	switch invalid.Reason {
	case x509.Expired:
		suspects := chain
		if invalid.Cert != nil {
			suspects = []*x509.Certificate{invalid.Cert}
		}
		for _, c := range suspects {
			if now.Before(c.NotBefore) {
				return ReasonNotYetValid
			}
		}
		return ReasonExpired
	case x509.IncompatibleUsage:
		return ReasonBadKeyUsage
	}
	return ReasonBadCertificate
}

// handshakeReason maps an error from tls.Conn.Handshake to a Reason.
func handshakeReason(err error, now time.Time) Reason {
	var reasoned *reasonError
	if errors.As(err, &reasoned) {
		return reasoned.reason
	}
	var verify *tls.CertificateVerificationError
	if errors.As(err, &verify) {
		return certReason(verify.Err, verify.UnverifiedCertificates, now)
	}
	if errors.Is(err, context.Canceled) {
		return ReasonShutdown
	}
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return ReasonTimeout
	}
	var header tls.RecordHeaderError
	if errors.As(err, &header) {
		return ReasonPlaintextRejected
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) {
		return ReasonClientClosed
	}
	msg := err.Error()
	switch {
	// crypto/tls has no typed error for these two; TestHandshakeReasons
	// pins the texts so that a Go upgrade that changes them fails loudly.
	case strings.Contains(msg, "didn't provide a certificate"):
		return ReasonNoClientCert
	case strings.Contains(msg, "unsupported versions"):
		return ReasonTLSVersion
	case strings.HasPrefix(msg, "remote error: tls:"):
		return ReasonClientAlert
	}
	return ReasonHandshakeFailed
}

// reasonError carries a Reason through an error chain, for checks of our
// own that run inside the TLS handshake.
type reasonError struct {
	reason Reason
	err    error
}

func (e *reasonError) Error() string { return e.err.Error() }
func (e *reasonError) Unwrap() error { return e.err }
