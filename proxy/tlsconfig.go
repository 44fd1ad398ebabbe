package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"
)

// newTLSConfig builds the server side of the client handshake from opts.
// Every handshake, full or resumed, runs verifyConnection; a connection
// made with newConn's config also records what the checks found.
func newTLSConfig(opts *Options) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(opts.TLSCert, opts.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("proxy: load --tls-cert/--tls-key: %w", err)
	}
	pool, _, err := loadCABundle(opts.TLSRootCAFile)
	if err != nil {
		return nil, err
	}
	minVersion, err := opts.minTLSVersion()
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		Certificates:           []tls.Certificate{cert},
		ClientAuth:             tls.RequireAndVerifyClientCert,
		ClientCAs:              pool,
		MinVersion:             minVersion,
		SessionTicketsDisabled: !opts.TLSSessionResumption,
	}
	cfg.VerifyConnection = func(state tls.ConnectionState) error {
		return verifyConnection(state, cfg.Time)
	}
	return cfg, nil
}

// perConnection makes base hand each handshake the config stored on its
// *nbConn, so that checks can record their findings on that connection.
// Session tickets stay those of base: crypto/tls takes them from the
// config given to tls.Server, not from the one GetConfigForClient returns.
func perConnection(base *tls.Config) {
	base.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if nb, ok := hello.Conn.(*nbConn); ok && nb.config != nil {
			return nb.config, nil
		}
		return nil, nil
	}
}

// loadCABundle reads the client CA bundle as a pool for verification and
// as a list of certificates, the CAs a CRL may come from.
func loadCABundle(path string) (*x509.CertPool, []*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("proxy: --tls-root-ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	var certs []*x509.Certificate
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("proxy: --tls-root-ca-file: %w", err)
		}
		pool.AddCert(cert)
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, nil, fmt.Errorf("proxy: --tls-root-ca-file %s holds no PEM certificate", path)
	}
	return pool, certs, nil
}

// verifyConnection runs on every handshake, full or resumed; crypto/tls
// skips VerifyPeerCertificate on resumption, so every check that must also
// hold for a resumed session belongs here. crypto/tls has verified the
// chain and the clientAuth usage on the full handshake that created the
// session; this repeats the date check against the clock of today.
func verifyConnection(state tls.ConnectionState, clock func() time.Time) error {
	if len(state.VerifiedChains) == 0 || len(state.PeerCertificates) == 0 {
		return &reasonError{reason: ReasonNoClientCert,
			err: errors.New("proxy: no verified client certificate")}
	}
	if leaf := state.PeerCertificates[0]; !hasClientAuth(leaf) {
		// crypto/x509 lets a certificate without any EKU extension serve
		// every purpose; a client certificate here must say clientAuth.
		return &reasonError{reason: ReasonBadKeyUsage, err: fmt.Errorf(
			"proxy: certificate %q lacks the clientAuth extended key usage", leaf.Subject)}
	}
	now := time.Now()
	if clock != nil {
		now = clock()
	}
	for _, c := range state.VerifiedChains[0] {
		if now.After(c.NotAfter) {
			return &reasonError{reason: ReasonExpired,
				err: fmt.Errorf("proxy: certificate %q expired at %s", c.Subject, c.NotAfter)}
		}
		if now.Before(c.NotBefore) {
			return &reasonError{reason: ReasonNotYetValid,
				err: fmt.Errorf("proxy: certificate %q not valid before %s", c.Subject, c.NotBefore)}
		}
	}
	return nil
}

func hasClientAuth(cert *x509.Certificate) bool {
	for _, u := range cert.ExtKeyUsage {
		if u == x509.ExtKeyUsageClientAuth || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

// chainsExpiry is when the first certificate of every verified chain has
// expired: past it, no chain the connection was admitted on is valid.
func chainsExpiry(chains [][]*x509.Certificate) time.Time {
	var last time.Time
	for _, chain := range chains {
		first := chain[0].NotAfter
		for _, c := range chain[1:] {
			if c.NotAfter.Before(first) {
				first = c.NotAfter
			}
		}
		if first.After(last) {
			last = first
		}
	}
	return last
}
