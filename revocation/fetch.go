package revocation

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"go.uber.org/zap"
)

const (
	// maxCRLSize caps a fetched CRL: a million entries take about 34 MB.
	maxCRLSize = 48 << 20
	// maxCRLURLs bounds the distribution points the proxy follows.
	maxCRLURLs = 64
	// maxCRLRefresh is the longest wait between fetches of one CRL.
	maxCRLRefresh = time.Hour
	// maxCRLRetry is the longest wait between failed fetches.
	maxCRLRetry = 5 * time.Minute
	// dpRetry is how long a distribution point that failed is not asked
	// again; its clients are refused meanwhile.
	dpRetry = 30 * time.Second
)

// crlURL is a CRL fetched over HTTP, refreshed well before its nextUpdate;
// the last good copy stays in force while fetches fail.
type crlURL struct {
	url      string
	fromDP   bool // learned from a certificate's distribution points
	crl      *CRL
	next     time.Time // when to fetch again
	failures int
}

// fetchCRL gets and verifies the CRL at url.
// slot is the fetch slot to hold while fetching.
func (c *Checker) fetchCRL(ctx context.Context, url string, slot chan struct{}) (*CRL, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CRLFetchTimeout)
	defer cancel()
	select {
	case slot <- struct{}{}:
		defer func() { <-slot }()
	case <-ctx.Done():
		return nil, fmt.Errorf("revocation: CRL URL %s: waiting to fetch: %w", url, ctx.Err())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("revocation: CRL URL %s: %w", url, err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("revocation: CRL URL %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("revocation: CRL URL %s: %s", url, resp.Status)
	}
	var body bytes.Buffer
	if resp.ContentLength > 0 && resp.ContentLength <= maxCRLSize {
		body.Grow(int(resp.ContentLength)) // one allocation, not a doubling series
	}
	_, err = body.ReadFrom(io.LimitReader(resp.Body, maxCRLSize+1))
	data := body.Bytes()
	if err != nil {
		return nil, fmt.Errorf("revocation: CRL URL %s: %w", url, err)
	}
	if len(data) > maxCRLSize {
		return nil, fmt.Errorf("revocation: CRL URL %s: over %d bytes", url, maxCRLSize)
	}
	crl, err := ParseCRL(data, c.cfg.Issuers)
	if err != nil {
		return nil, fmt.Errorf("revocation: CRL URL %s: %w", url, err)
	}
	return crl, nil
}

// refreshAt is when to fetch a CRL again: three quarters into its life,
// within [minRefresh, maxCRLRefresh] from now.
func (c *Checker) refreshAt(crl *CRL, now time.Time) time.Time {
	at := now.Add(maxCRLRefresh)
	if !crl.NextUpdate.IsZero() {
		life := crl.NextUpdate.Sub(crl.ThisUpdate)
		at = minTime(at, crl.ThisUpdate.Add(life*3/4))
	}
	if earliest := now.Add(c.cfg.CRLMinRefresh); at.Before(earliest) {
		at = earliest
	}
	return at
}

// refreshURL fetches u and installs the result, or keeps the last good
// copy and schedules a retry. It reports whether the CRL in force changed.
func (c *Checker) refreshURL(ctx context.Context, u *crlURL) bool {
	crl, err := c.fetchCRL(ctx, u.url, c.fetchingURLs)
	now := c.cfg.Clock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil && u.crl != nil && !bytes.Equal(crl.Issuer.RawSubjectPublicKeyInfo,
		u.crl.Issuer.RawSubjectPublicKeyInfo) {
		err = fmt.Errorf("revocation: CRL URL %s now serves %q's CRL, not %q's", u.url,
			crl.Issuer.Subject, u.crl.Issuer.Subject)
	}
	if err == nil && u.crl != nil && crl.ThisUpdate.Before(u.crl.ThisUpdate) {
		err = fmt.Errorf("revocation: CRL URL %s served an older CRL than the one in force",
			u.url)
	}
	if err != nil {
		u.failures++
		c.failures.Add(1)
		retry := min(c.cfg.CRLMinRefresh<<min(u.failures, 10), maxCRLRetry)
		u.next = now.Add(retry)
		c.cfg.Log.Error("CRL fetch failed; the last good CRL stays in force",
			zap.String("url", u.url), zap.Duration("retry_in", retry), zap.Error(err))
		return false
	}
	u.failures, u.crl, u.next = 0, crl, c.refreshAt(crl, now)
	c.cfg.Log.Info("CRL fetched", zap.String("url", u.url),
		zap.String("issuer", crl.Issuer.Subject.String()), zap.Int("revoked", crl.Len()),
		zap.Time("next_update", crl.NextUpdate), zap.Time("next_fetch", u.next))
	c.rebuildLocked()
	return true
}

// refreshDue fetches every CRL URL whose time has come.
func (c *Checker) refreshDue(ctx context.Context) {
	c.mu.Lock()
	now := c.cfg.Clock()
	var due []*crlURL
	for _, u := range c.urls {
		if !now.Before(u.next) {
			due = append(due, u)
		}
	}
	c.mu.Unlock()
	changed := false
	for _, u := range due {
		changed = c.refreshURL(ctx, u) || changed
	}
	if changed && c.cfg.OnChange != nil {
		c.cfg.OnChange()
	}
}

// distributionPoint returns the source for a certificate's CRL
// distribution point, fetching it the first time it is seen. Concurrent
// first sightings of one URL share one fetch.
func (c *Checker) distributionPoint(ctx context.Context, url string) (*crlURL, error) {
	c.mu.Lock()
	for _, u := range c.urls {
		if u.url == url {
			c.mu.Unlock()
			return u, nil
		}
	}
	if until, failed := c.dpFailed[url]; failed && c.cfg.Clock().Before(until) {
		c.mu.Unlock()
		return nil, fmt.Errorf("revocation: CRL distribution point %s failed recently; "+
			"retrying after %s", url, until.Format(time.RFC3339))
	}
	call, joined := c.dpInflight[url]
	if !joined {
		if len(c.urls)+len(c.dpInflight) >= maxCRLURLs {
			c.mu.Unlock()
			return nil, fmt.Errorf("revocation: %d CRL URLs already; not following %s",
				maxCRLURLs, url)
		}
		call = &dpCall{done: make(chan struct{})}
		c.dpInflight[url] = call
	}
	c.mu.Unlock()
	if !joined {
		// The fetch serves every handshake waiting on it: it runs apart
		// from this one, under its own timeout.
		go func() {
			call.u, call.err = c.addDistributionPoint(context.WithoutCancel(ctx), url)
			c.mu.Lock()
			delete(c.dpInflight, url)
			if call.err != nil {
				c.dpFailed[url] = c.cfg.Clock().Add(dpRetry)
				c.failures.Add(1)
				c.cfg.Log.Error("CRL distribution point fetch failed", zap.String("url", url),
					zap.Error(call.err))
			}
			c.mu.Unlock()
			close(call.done)
		}()
	}
	select {
	case <-call.done:
		return call.u, call.err
	case <-ctx.Done():
		return nil, fmt.Errorf("revocation: CRL distribution point %s: %w", url, ctx.Err())
	}
}

type dpCall struct {
	done chan struct{}
	u    *crlURL
	err  error
}

func (c *Checker) addDistributionPoint(ctx context.Context, url string) (*crlURL, error) {
	crl, err := c.fetchCRL(ctx, url, c.fetchingDPs)
	if err != nil {
		return nil, err
	}
	u := &crlURL{url: url, fromDP: true, crl: crl, next: c.refreshAt(crl, c.cfg.Clock())}
	c.mu.Lock()
	c.urls = append(c.urls, u)
	delete(c.dpFailed, url)
	c.rebuildLocked()
	c.mu.Unlock()
	c.cfg.Log.Info("CRL distribution point added", zap.String("url", url),
		zap.String("issuer", crl.Issuer.Subject.String()), zap.Int("revoked", crl.Len()))
	return u, nil
}
