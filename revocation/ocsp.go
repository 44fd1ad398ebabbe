package revocation

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"golang.org/x/crypto/ocsp"
)

// OCSPMode says what an OCSP lookup that gets no answer means.
type OCSPMode int

const (
	// OCSPOff: no OCSP lookups.
	OCSPOff OCSPMode = iota
	// OCSPSoftFail: no answer lets the client in, and says so.
	OCSPSoftFail
	// OCSPHardFail: no answer refuses the client.
	OCSPHardFail
)

// ParseOCSPMode reads "off", "soft-fail" or "hard-fail".
func ParseOCSPMode(s string) (OCSPMode, error) {
	switch s {
	case "off":
		return OCSPOff, nil
	case "soft-fail":
		return OCSPSoftFail, nil
	case "hard-fail":
		return OCSPHardFail, nil
	}
	return 0, fmt.Errorf("revocation: OCSP mode %q is not valid; write off, soft-fail or hard-fail",
		s)
}

const (
	// maxOCSPResponse caps a responder's answer.
	maxOCSPResponse = 64 << 10
	// ocspSkew is the clock difference allowed around thisUpdate and
	// nextUpdate.
	ocspSkew = 5 * time.Minute
	// ocspCeiling bounds how long an answer without nextUpdate is used.
	ocspCeiling = time.Hour
	// maxOCSPCache bounds the number of cached answers.
	maxOCSPCache = 100_000
	// ocspFailureTTL is how long a failed lookup is remembered as failed
	// (never as good), so that a down responder costs one timeout per
	// certificate per period, not one per handshake.
	ocspFailureTTL = 5 * time.Second
)

// ocspKey names one certificate: its issuer's key and its serial.
type ocspKey struct {
	issuer [32]byte
	serial string
}

type ocspFailure struct {
	err   error
	until time.Time
}

type ocspAnswer struct {
	status Status
	entry  Entry
	until  time.Time
}

type ocspCall struct {
	done   chan struct{}
	answer ocspAnswer
	err    error
}

// ocspClient asks OCSP responders and caches their good and revoked
// answers until nextUpdate. Concurrent lookups of one certificate share
// one request; failures are not cached.
type ocspClient struct {
	responderURL string // overrides the certificates' AIA URL when set
	timeout      time.Duration
	http         *http.Client
	clock        func() time.Time

	mu       sync.Mutex
	cache    map[ocspKey]ocspAnswer
	failed   map[ocspKey]ocspFailure
	inflight map[ocspKey]*ocspCall
}

func newOCSPClient(responderURL string, timeout time.Duration,
	clock func() time.Time) *ocspClient {
	return &ocspClient{
		responderURL: responderURL,
		timeout:      timeout,
		http:         &http.Client{Timeout: timeout},
		clock:        clock,
		cache:        make(map[ocspKey]ocspAnswer),
		failed:       make(map[ocspKey]ocspFailure),
		inflight:     make(map[ocspKey]*ocspCall),
	}
}

func keyOf(cert, issuer *x509.Certificate) ocspKey {
	return ocspKey{issuer: sha256.Sum256(issuer.RawSubjectPublicKeyInfo),
		serial: string(serialKey(cert.SerialNumber))}
}

// url is where to ask about cert, or "" when nowhere.
func (o *ocspClient) url(cert *x509.Certificate) string {
	if o.responderURL != "" {
		return o.responderURL
	}
	if len(cert.OCSPServer) > 0 {
		return cert.OCSPServer[0]
	}
	return ""
}

// lookup returns the status of cert, from the cache or the responder.
// changed reports an answer that differs from the one cached before.
func (o *ocspClient) lookup(ctx context.Context, cert, issuer *x509.Certificate) (
	answer ocspAnswer, changed bool, err error) {
	key := keyOf(cert, issuer)
	now := o.clock()
	o.mu.Lock()
	old, cached := o.cache[key]
	if cached && now.Before(old.until) {
		o.mu.Unlock()
		return old, false, nil
	}
	if f, ok := o.failed[key]; ok && now.Before(f.until) {
		o.mu.Unlock()
		return ocspAnswer{}, false, f.err
	}
	call, joined := o.inflight[key]
	if !joined {
		call = &ocspCall{done: make(chan struct{})}
		o.inflight[key] = call
	}
	o.mu.Unlock()

	if !joined {
		// Others may wait on this request: it runs apart from this caller,
		// whose cancellation must not fail them, under its own timeout.
		go func() {
			call.answer, call.err = o.fetch(context.WithoutCancel(ctx), cert, issuer)
			o.finish(key, call)
		}()
	}
	select {
	case <-call.done:
	case <-ctx.Done():
		return ocspAnswer{}, false, ctx.Err()
	}
	if call.err != nil {
		return ocspAnswer{}, false, call.err
	}
	// Only the caller that made the request reports a change, once.
	return call.answer, !joined && cached && old.status != call.answer.status, nil
}

func (o *ocspClient) finish(key ocspKey, call *ocspCall) {
	o.mu.Lock()
	delete(o.inflight, key)
	if call.err != nil {
		if len(o.failed) >= maxOCSPCache {
			clear(o.failed)
		}
		o.failed[key] = ocspFailure{err: call.err, until: o.clock().Add(ocspFailureTTL)}
	} else {
		delete(o.failed, key)
	}
	if call.err == nil {
		if len(o.cache) >= maxOCSPCache {
			o.evictLocked()
		}
		o.cache[key] = call.answer
	}
	o.mu.Unlock()
	close(call.done)
}

// evictLocked drops expired answers, or, if none has expired, some at
// random, so that the cache stays bounded.
func (o *ocspClient) evictLocked() {
	now := o.clock()
	for k, a := range o.cache {
		if !now.Before(a.until) {
			delete(o.cache, k)
		}
	}
	for k := range o.cache {
		if len(o.cache) < maxOCSPCache*9/10 {
			break
		}
		delete(o.cache, k)
	}
}

// fetch asks the responder and verifies its answer.
func (o *ocspClient) fetch(ctx context.Context, cert, issuer *x509.Certificate) (
	ocspAnswer, error) {
	url := o.url(cert)
	req, err := ocsp.CreateRequest(cert, issuer, &ocsp.RequestOptions{Hash: crypto.SHA1})
	if err != nil {
		return ocspAnswer{}, fmt.Errorf("revocation: OCSP request: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(req))
	if err != nil {
		return ocspAnswer{}, fmt.Errorf("revocation: OCSP responder %s: %w", url, err)
	}
	hreq.Header.Set("Content-Type", "application/ocsp-request")
	resp, err := o.http.Do(hreq)
	if err != nil {
		return ocspAnswer{}, fmt.Errorf("revocation: OCSP responder %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return ocspAnswer{}, fmt.Errorf("revocation: OCSP responder %s: %s", url, resp.Status)
	}
	der, err := io.ReadAll(io.LimitReader(resp.Body, maxOCSPResponse+1))
	if err != nil {
		return ocspAnswer{}, fmt.Errorf("revocation: OCSP responder %s: %w", url, err)
	}
	if len(der) > maxOCSPResponse {
		return ocspAnswer{}, fmt.Errorf("revocation: OCSP responder %s: answer over %d bytes",
			url, maxOCSPResponse)
	}
	return o.verify(der, cert, issuer)
}

// verify checks an OCSP answer: about cert, signed by its issuer or by a
// delegated responder that the issuer certified for OCSP signing and that
// is valid now, and current.
func (o *ocspClient) verify(der []byte, cert, issuer *x509.Certificate) (ocspAnswer, error) {
	// TODO(ocsp): x/crypto/ocsp matches the answer to cert by serial only
	// and does not expose the CertID's issuer hashes to compare; the
	// signature by the issuer (or its delegate) is what binds the answer.
	resp, err := ocsp.ParseResponseForCert(der, cert, nil)
	if err != nil {
		return ocspAnswer{}, fmt.Errorf("revocation: OCSP answer: %w", err)
	}
	now := o.clock()
	if err := checkResponder(resp, issuer, now); err != nil {
		return ocspAnswer{}, err
	}
	if resp.ThisUpdate.After(now.Add(ocspSkew)) {
		return ocspAnswer{}, errors.New("revocation: OCSP answer is from the future")
	}
	// Without nextUpdate an answer is good for ocspCeiling after it was
	// made, not after it was fetched: an old one replayed is refused.
	until := resp.ThisUpdate.Add(ocspCeiling)
	if resp.NextUpdate.IsZero() && !now.Before(until.Add(ocspSkew)) {
		return ocspAnswer{}, errors.New("revocation: OCSP answer without nextUpdate is too old")
	}
	if !resp.NextUpdate.IsZero() {
		if resp.NextUpdate.Before(resp.ThisUpdate) {
			return ocspAnswer{}, errors.New("revocation: OCSP answer's nextUpdate precedes thisUpdate")
		}
		if now.After(resp.NextUpdate.Add(ocspSkew)) {
			return ocspAnswer{}, errors.New("revocation: OCSP answer is past its nextUpdate")
		}
		until = minTime(resp.NextUpdate, now.Add(ocspCeiling))
	}
	switch resp.Status {
	case ocsp.Good:
		return ocspAnswer{status: Good, until: until}, nil
	case ocsp.Revoked:
		return ocspAnswer{status: Revoked, until: until, entry: Entry{
			Reason: reasonName(int16(resp.RevocationReason)), RevokedAt: resp.RevokedAt}}, nil
	}
	return ocspAnswer{}, errors.New("revocation: OCSP responder does not know the certificate")
}

func checkResponder(resp *ocsp.Response, issuer *x509.Certificate, now time.Time) error {
	signer := resp.Certificate
	if signer == nil {
		if err := resp.CheckSignatureFrom(issuer); err != nil {
			return fmt.Errorf("revocation: OCSP answer not signed by the issuer: %w", err)
		}
		return nil
	}
	// ParseResponseForCert has checked that signer made the signature.
	if signer.Equal(issuer) {
		return nil
	}
	if err := signer.CheckSignatureFrom(issuer); err != nil {
		return fmt.Errorf("revocation: OCSP responder certificate not issued by the issuer: %w",
			err)
	}
	if !hasEKU(signer, x509.ExtKeyUsageOCSPSigning) {
		return errors.New("revocation: OCSP responder certificate lacks the OCSPSigning usage")
	}
	if now.Before(signer.NotBefore) || now.After(signer.NotAfter) {
		return errors.New("revocation: OCSP responder certificate is not valid now")
	}
	return nil
}

func hasEKU(cert *x509.Certificate, want x509.ExtKeyUsage) bool {
	for _, u := range cert.ExtKeyUsage {
		if u == want {
			return true
		}
	}
	return false
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
