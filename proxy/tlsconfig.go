package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"
)

// newTLSConfig builds the server side of the client handshake from opts.
func newTLSConfig(opts *Options) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(opts.TLSCert, opts.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("proxy: load --tls-cert/--tls-key: %w", err)
	}
	pool, err := loadCAPool(opts.TLSRootCAFile)
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

func loadCAPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("proxy: --tls-root-ca-file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("proxy: --tls-root-ca-file %s holds no PEM certificate", path)
	}
	return pool, nil
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
