package revocation

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Status is the revocation status of a chain.
type Status int

const (
	// Good: no CRL that applies lists any certificate of the chain.
	Good Status = iota
	// Revoked: a certificate of the chain is listed.
	Revoked
	// Unknown: the status cannot be told, e.g. the issuer's CRL is stale.
	Unknown
)

func (s Status) String() string {
	return [...]string{"good", "revoked", "unknown"}[s]
}

// Result is the outcome of a check.
type Result struct {
	Status Status
	Cert   *x509.Certificate // the revoked or undecided certificate
	Entry  Entry             // for Revoked
	Detail string
	// SoftFailed: an OCSP lookup got no answer and soft-fail let the
	// chain pass as Good; Detail says why.
	SoftFailed bool
}

// Config configures a Checker.
type Config struct {
	// CRLFiles are PEM or DER CRL files, re-read when they change.
	CRLFiles []string
	// CRLURLs are fetched over HTTP and refreshed before their nextUpdate.
	CRLURLs []string
	// FetchDistributionPoints follows the CRL distribution points of
	// client certificates whose issuer has no CRL otherwise.
	FetchDistributionPoints bool
	// CRLFetchTimeout bounds one CRL fetch; CRLMinRefresh is the shortest
	// wait between fetches of one URL (and the first retry after a
	// failure).
	CRLFetchTimeout time.Duration
	CRLMinRefresh   time.Duration
	// StaleGrace is how long past its nextUpdate a CRL is still used.
	StaleGrace time.Duration
	// Issuers are the CAs a CRL may be signed by: the client CA bundle.
	Issuers []*x509.Certificate
	// PollInterval is how often CRL files are checked for changes.
	PollInterval time.Duration
	// OCSP, OCSPResponderURL (which overrides the certificates' own
	// responder) and OCSPTimeout configure OCSP lookups of client
	// certificates.
	OCSP             OCSPMode
	OCSPResponderURL string
	OCSPTimeout      time.Duration
	// RecheckInterval is how often, with OCSP on, OnChange is called so
	// that open connections are checked again as cached answers expire.
	RecheckInterval time.Duration
	// OnChange is called after the revocation state may have changed,
	// e.g. a CRL was reloaded, so that open connections can be checked
	// again.
	OnChange func()
	Log      *zap.Logger
	Clock    func() time.Time
}

// Checker answers revocation questions from the CRLs it keeps current.
type Checker struct {
	cfg      Config
	index    atomic.Pointer[crlIndex]
	failures atomic.Int64
	ocsp     *ocspClient // nil when OCSP is off

	// parents maps a bundle CA (by its DER) to the bundle CA that issued
	// it, so that chains ending at an intermediate of the bundle are
	// checked up to the root.
	parents map[string]*x509.Certificate

	http *http.Client
	// One fetch at a time per kind bounds the memory fetched bodies take,
	// and keeps distribution points from delaying --crl-url refreshes.
	fetchingURLs chan struct{}
	fetchingDPs  chan struct{}
	mu           sync.Mutex // guards files, urls, dpInflight, dpFailed; serializes reloads
	files        []*crlFile
	urls         []*crlURL
	dpInflight   map[string]*dpCall
	dpFailed     map[string]time.Time // distribution points that failed, until when
}

// crlFile is one CRL file and the last good CRL read from it.
type crlFile struct {
	path string
	seen fileStamp
	crl  *CRL
}

type fileStamp struct {
	mtime time.Time
	size  int64
	inode uint64
}

// crlIndex maps an issuer, by its public key, to its newest CRL.
type crlIndex struct {
	byKey map[string]*CRL
}

// New loads every CRL file. A file that cannot be read, parsed or
// verified is an error here: the proxy must not start without the
// revocations it was told to enforce.
func New(cfg Config) (*Checker, error) {
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.OCSPTimeout <= 0 {
		cfg.OCSPTimeout = 2 * time.Second
	}
	if cfg.RecheckInterval <= 0 {
		cfg.RecheckInterval = 10 * time.Second
	}
	if cfg.CRLFetchTimeout <= 0 {
		cfg.CRLFetchTimeout = 15 * time.Second
	}
	if cfg.CRLMinRefresh <= 0 {
		cfg.CRLMinRefresh = 30 * time.Second
	}
	c := &Checker{cfg: cfg, http: &http.Client{Timeout: cfg.CRLFetchTimeout},
		parents: bundleParents(cfg.Issuers), fetchingURLs: make(chan struct{}, 1),
		fetchingDPs: make(chan struct{}, 1),
		dpInflight:  make(map[string]*dpCall), dpFailed: make(map[string]time.Time)}
	if cfg.OCSP != OCSPOff {
		c.ocsp = newOCSPClient(cfg.OCSPResponderURL, cfg.OCSPTimeout, cfg.Clock)
	}
	for _, path := range cfg.CRLFiles {
		f := &crlFile{path: path}
		if err := c.load(f); err != nil {
			return nil, err
		}
		c.files = append(c.files, f)
	}
	for _, url := range cfg.CRLURLs {
		crl, err := c.fetchCRL(context.Background(), url, c.fetchingURLs)
		if err != nil {
			return nil, err
		}
		c.urls = append(c.urls, &crlURL{url: url, crl: crl, next: c.refreshAt(crl, cfg.Clock())})
	}
	c.rebuildLocked()
	return c, nil
}

// bundleParents finds, for each CA of the bundle that is not self-issued,
// the bundle CA whose key signed it.
func bundleParents(issuers []*x509.Certificate) map[string]*x509.Certificate {
	parents := make(map[string]*x509.Certificate)
	for _, child := range issuers {
		if bytes.Equal(child.RawIssuer, child.RawSubject) {
			continue
		}
		for _, parent := range issuers {
			if parent != child && bytes.Equal(parent.RawSubject, child.RawIssuer) &&
				child.CheckSignatureFrom(parent) == nil {
				parents[string(child.Raw)] = parent
				break
			}
		}
	}
	return parents
}

// Enabled tells whether any revocation source is configured.
func (c *Checker) Enabled() bool {
	return len(c.files) > 0 || len(c.urls) > 0 || c.cfg.FetchDistributionPoints || c.ocsp != nil
}

// StaleCRLs counts the issuers whose CRL in force is stale now, grace
// included.
func (c *Checker) StaleCRLs() int {
	now := c.cfg.Clock()
	n := 0
	for _, crl := range c.index.Load().byKey {
		if !crl.NextUpdate.IsZero() && now.After(crl.NextUpdate.Add(c.cfg.StaleGrace)) {
			n++
		}
	}
	return n
}

// ReloadFailures counts CRL reloads that failed and left the last good
// CRL in force.
func (c *Checker) ReloadFailures() int64 { return c.failures.Load() }

func (c *Checker) load(f *crlFile) error {
	stamp, err := statFile(f.path)
	if err != nil {
		return fmt.Errorf("revocation: CRL file: %w", err)
	}
	data, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("revocation: CRL file: %w", err)
	}
	crl, err := ParseCRL(data, c.cfg.Issuers)
	if err != nil {
		return fmt.Errorf("revocation: CRL file %s: %w", f.path, err)
	}
	if f.crl != nil && !bytes.Equal(crl.Issuer.RawSubjectPublicKeyInfo,
		f.crl.Issuer.RawSubjectPublicKeyInfo) {
		return fmt.Errorf("revocation: CRL file %s now holds %q's CRL, not %q's: a file keeps "+
			"its issuer (restart to change it)", f.path, crl.Issuer.Subject, f.crl.Issuer.Subject)
	}
	if f.crl != nil && crl.ThisUpdate.Before(f.crl.ThisUpdate) {
		return fmt.Errorf("revocation: CRL file %s is older (thisUpdate %s) than the one in force "+
			"(%s)", f.path, crl.ThisUpdate, f.crl.ThisUpdate)
	}
	f.seen, f.crl = stamp, crl
	c.cfg.Log.Info("CRL loaded", zap.String("path", f.path),
		zap.String("issuer", crl.Issuer.Subject.String()), zap.Int("revoked", crl.Len()),
		zap.Time("next_update", crl.NextUpdate))
	return nil
}

func statFile(path string) (fileStamp, error) {
	fi, err := os.Stat(path) // follows symlinks, so a swapped link is a change
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{mtime: fi.ModTime(), size: fi.Size(), inode: inode(fi)}, nil
}

// rebuildLocked publishes a new index from the current CRLs of every
// source; for an issuer with several, the newest wins.
func (c *Checker) rebuildLocked() {
	idx := &crlIndex{byKey: make(map[string]*CRL)}
	add := func(crl *CRL) {
		key := string(crl.Issuer.RawSubjectPublicKeyInfo)
		if old, ok := idx.byKey[key]; !ok || crl.ThisUpdate.After(old.ThisUpdate) {
			idx.byKey[key] = crl
		}
	}
	for _, f := range c.files {
		add(f.crl)
	}
	for _, u := range c.urls {
		add(u.crl)
	}
	c.index.Store(idx)
}

// Reload re-reads every CRL file whose content may have changed, or all of
// them when force is set (SIGHUP). It reports whether anything changed.
func (c *Checker) Reload(force bool) bool {
	changed := c.reloadFiles(force)
	if changed && c.cfg.OnChange != nil {
		c.cfg.OnChange()
	}
	return changed
}

func (c *Checker) reloadFiles(force bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	changed := false
	for _, f := range c.files {
		// A missing file has the zero stamp: it counts as one failure, not
		// one per poll.
		stamp, err := statFile(f.path)
		if stamp == f.seen && !force {
			continue
		}
		if err == nil {
			err = c.load(f)
		}
		if err != nil {
			c.failures.Add(1)
			c.cfg.Log.Error("CRL reload failed; the last good CRL stays in force",
				zap.String("path", f.path), zap.Error(err))
			f.seen = stamp // retry when the file changes again
			continue
		}
		changed = true
	}
	if changed {
		c.rebuildLocked()
	}
	return changed
}

// Run polls the CRL files, refreshes the CRL URLs, and with OCSP on asks
// for open connections to be checked again now and then, until ctx ends.
func (c *Checker) Run(ctx context.Context) {
	var fetches sync.WaitGroup
	defer fetches.Wait()
	fetches.Go(func() { c.fetchLoop(ctx) })
	poll := time.NewTicker(c.cfg.PollInterval)
	defer poll.Stop()
	var recheck <-chan time.Time
	if c.ocsp != nil && c.cfg.OnChange != nil {
		t := time.NewTicker(c.cfg.RecheckInterval)
		defer t.Stop()
		recheck = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
			c.Reload(false)
		case <-recheck:
			c.cfg.OnChange()
		}
	}
}

// fetchLoop refreshes CRL URLs as they come due, apart from the file polls
// so that a slow server does not hold those up.
func (c *Checker) fetchLoop(ctx context.Context) {
	t := time.NewTicker(c.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.refreshDue(ctx)
		}
	}
}

// Check decides the revocation status of a verified chain, leaf first and
// root last: each certificate but the root is looked up in its issuer's
// CRL, if there is one; then, with OCSP on, the leaf is asked about.
func (c *Checker) Check(ctx context.Context, chain []*x509.Certificate) Result {
	if r := c.checkCRLs(ctx, chain, true); r.Status != Good {
		return r
	}
	return c.CheckOCSP(ctx, chain)
}

// CheckCRLs checks chain against the CRLs in force only: no fetch, no
// wait, fit for sweeping every open connection at once.
func (c *Checker) CheckCRLs(chain []*x509.Certificate) Result {
	return c.checkCRLs(context.Background(), chain, false)
}

// checkCRLs checks every certificate of chain but the root, and then the
// bundle CAs above the chain's anchor: crypto/x509 ends a chain at any CA
// of the pool, which may be an intermediate that its root has revoked.
func (c *Checker) checkCRLs(ctx context.Context, chain []*x509.Certificate,
	fetch bool) Result {
	now := c.cfg.Clock()
	cert := chain[0]
	for i := 1; ; i++ {
		var issuer *x509.Certificate
		switch {
		case i < len(chain):
			issuer = chain[i]
		case i < len(chain)+maxBundleDepth:
			issuer = c.parents[string(cert.Raw)]
		}
		if issuer == nil {
			return Result{Status: Good}
		}
		r := c.checkOne(ctx, cert, issuer, now, fetch)
		if r.Status != Good {
			return r
		}
		cert = issuer
	}
}

// maxBundleDepth bounds the walk above a chain's anchor.
const maxBundleDepth = 8

func (c *Checker) checkOne(ctx context.Context, cert, issuer *x509.Certificate,
	now time.Time, fetch bool) Result {
	crl, r := c.crlFor(ctx, cert, issuer, fetch)
	if r.Status != Good || crl == nil {
		return r
	}
	if r, stale := c.stale(crl, cert, now); stale {
		return r
	}
	if e, ok := crl.Lookup(cert.SerialNumber); ok {
		return Result{Status: Revoked, Cert: cert, Entry: e,
			Detail: fmt.Sprintf("certificate %q (serial %s) revoked at %s, reason %s",
				cert.Subject.CommonName, cert.SerialNumber.Text(16),
				e.RevokedAt.Format(time.RFC3339), orUnspecified(e.Reason))}
	}
	return Result{Status: Good}
}

// crlFor finds the CRL that applies to cert: its issuer's, from the
// configured sources or, when allowed, from cert's distribution point. A
// nil CRL with a Good result means none applies.
func (c *Checker) crlFor(ctx context.Context, cert, issuer *x509.Certificate,
	fetch bool) (*CRL, Result) {
	// Indexing with string(bytes) in place does not allocate.
	if crl, ok := c.index.Load().byKey[string(issuer.RawSubjectPublicKeyInfo)]; ok {
		return crl, Result{Status: Good}
	}
	url := httpURL(cert.CRLDistributionPoints)
	if !c.cfg.FetchDistributionPoints || url == "" || !fetch {
		return nil, Result{Status: Good}
	}
	if _, err := c.distributionPoint(ctx, url); err != nil {
		return nil, Result{Status: Unknown, Cert: cert, Detail: err.Error()}
	}
	if crl, ok := c.index.Load().byKey[string(issuer.RawSubjectPublicKeyInfo)]; ok {
		return crl, Result{Status: Good}
	}
	return nil, Result{Status: Unknown, Cert: cert, Detail: fmt.Sprintf(
		"the CRL at distribution point %s is not from the issuer %q", url,
		issuer.Subject.CommonName)}
}

func httpURL(urls []string) string {
	for _, u := range urls {
		if strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://") {
			return u
		}
	}
	return ""
}

// CheckOCSP asks about the leaf, if OCSP is on and a responder is known.
func (c *Checker) CheckOCSP(ctx context.Context, chain []*x509.Certificate) Result {
	if c.ocsp == nil || len(chain) < 2 || c.ocsp.url(chain[0]) == "" {
		return Result{Status: Good}
	}
	leaf := chain[0]
	answer, changed, err := c.ocsp.lookup(ctx, leaf, chain[1])
	if err != nil {
		detail := fmt.Sprintf("no OCSP answer for %q: %v", leaf.Subject.CommonName, err)
		if c.cfg.OCSP == OCSPSoftFail {
			return Result{Status: Good, SoftFailed: true, Detail: detail}
		}
		return Result{Status: Unknown, Cert: leaf, Detail: detail}
	}
	if changed && c.cfg.OnChange != nil {
		c.cfg.OnChange()
	}
	if answer.status != Revoked {
		return Result{Status: Good}
	}
	return Result{Status: Revoked, Cert: leaf, Entry: answer.entry,
		Detail: fmt.Sprintf("OCSP: certificate %q (serial %s) revoked at %s, reason %s",
			leaf.Subject.CommonName, leaf.SerialNumber.Text(16),
			answer.entry.RevokedAt.Format(time.RFC3339), orUnspecified(answer.entry.Reason))}
}

func (c *Checker) stale(crl *CRL, cert *x509.Certificate, now time.Time) (Result, bool) {
	if crl.NextUpdate.IsZero() || !now.After(crl.NextUpdate.Add(c.cfg.StaleGrace)) {
		return Result{}, false
	}
	return Result{Status: Unknown, Cert: cert, Detail: fmt.Sprintf(
		"the CRL of %q is stale: its nextUpdate was %s", crl.Issuer.Subject.CommonName,
		crl.NextUpdate.Format(time.RFC3339))}, true
}

func orUnspecified(reason string) string {
	if reason == "" {
		return "unspecified"
	}
	return reason
}

// ErrRevoked and ErrUnknown let callers sort check failures.
var (
	ErrRevoked = errors.New("revocation: certificate revoked")
	ErrUnknown = errors.New("revocation: revocation status unknown")
)

// Err turns a Result into an error wrapping ErrRevoked or ErrUnknown, or
// nil when the chain is good.
func (r Result) Err() error {
	switch r.Status {
	case Revoked:
		return fmt.Errorf("%w: %s", ErrRevoked, r.Detail)
	case Unknown:
		return fmt.Errorf("%w: %s", ErrUnknown, r.Detail)
	}
	return nil
}
