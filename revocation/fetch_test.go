package revocation

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// crlHTTP serves whatever CRL bytes the test sets, or an error status.
type crlHTTP struct {
	mu     sync.Mutex
	body   []byte
	status int
	hits   atomic.Int64
	gate   chan struct{} // if set, requests wait for it to close
}

func (h *crlHTTP) set(body []byte, status int) {
	h.mu.Lock()
	h.body, h.status = body, status
	h.mu.Unlock()
}

func (h *crlHTTP) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	h.hits.Add(1)
	if h.gate != nil {
		<-h.gate
	}
	h.mu.Lock()
	body, status := h.body, h.status
	h.mu.Unlock()
	if status != http.StatusOK {
		http.Error(w, "nope", status)
		return
	}
	_, _ = w.Write(body)
}

func serveCRL(t *testing.T, body []byte) (*crlHTTP, string) {
	h := &crlHTTP{body: body, status: http.StatusOK}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return h, srv.URL + "/ca.crl"
}

func TestCRLURLRefresh(t *testing.T) {
	ca, err := testpki.NewCA("url root")
	require.NoError(t, err)
	leaf, err := ca.Client("refreshed")
	require.NoError(t, err)
	chain := []*x509.Certificate{leaf.Cert, ca.Cert}
	h, url := serveCRL(t, makeCRL(t, ca, nil, time.Now().Add(time.Hour)))

	var changes atomic.Int64
	c, err := New(Config{CRLURLs: []string{url}, Issuers: []*x509.Certificate{ca.Cert},
		OnChange: func() { changes.Add(1) }, CRLMinRefresh: 10 * time.Millisecond})
	require.NoError(t, err)
	assert.Equal(t, Good, c.Check(context.Background(), chain).Status)

	// Due now: the next fetch sees the revocation.
	h.set(makeCRL(t, ca, []*big.Int{leaf.Cert.SerialNumber}, time.Now().Add(time.Hour)),
		http.StatusOK)
	c.urls[0].next = time.Time{}
	c.refreshDue(context.Background())
	assert.Equal(t, Revoked, c.Check(context.Background(), chain).Status)
	assert.Equal(t, int64(1), changes.Load())

	for _, bad := range []struct {
		name   string
		body   []byte
		status int
	}{
		{"server error", nil, http.StatusInternalServerError},
		{"garbage", []byte("not a CRL"), http.StatusOK},
		{"older CRL", makeCRLAt(t, ca, time.Now().Add(-2*time.Hour)), http.StatusOK},
	} {
		t.Run(bad.name, func(t *testing.T) {
			h.set(bad.body, bad.status)
			failures := c.ReloadFailures()
			c.urls[0].next = time.Time{}
			c.refreshDue(context.Background())
			assert.Equal(t, failures+1, c.ReloadFailures())
			assert.Equal(t, Revoked, c.Check(context.Background(), chain).Status,
				"the last good CRL stays in force")
			assert.True(t, c.urls[0].next.After(time.Now()), "a retry is scheduled")
		})
	}
}

func makeCRLAt(t *testing.T, ca *testpki.CA, thisUpdate time.Time) []byte {
	crl, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(1), ThisUpdate: thisUpdate, NextUpdate: thisUpdate.Add(3 * time.Hour),
	}, ca.Cert, ca.Key)
	require.NoError(t, err)
	return crl
}

func TestRefreshAt(t *testing.T) {
	c := &Checker{cfg: Config{CRLMinRefresh: 30 * time.Second}}
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name       string
		this, next time.Time
		want       time.Time
	}{
		{"three quarters into a short life", now, now.Add(40 * time.Minute),
			now.Add(30 * time.Minute)},
		{"at most an hour", now, now.Add(7 * 24 * time.Hour), now.Add(time.Hour)},
		{"no nextUpdate", now, time.Time{}, now.Add(time.Hour)},
		{"stale: soon, not in a loop", now.Add(-2 * time.Hour), now.Add(-time.Hour),
			now.Add(30 * time.Second)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := c.refreshAt(&CRL{ThisUpdate: tc.this, NextUpdate: tc.next}, now)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestDistributionPoints(t *testing.T) {
	ca, err := testpki.NewCA("dp root")
	require.NoError(t, err)
	other, err := testpki.NewCA("dp other")
	require.NoError(t, err)
	issuers := []*x509.Certificate{ca.Cert, other.Cert}
	newChecker := func() *Checker {
		c, err := New(Config{FetchDistributionPoints: true, Issuers: issuers})
		require.NoError(t, err)
		return c
	}
	leafAt := func(url string) []*x509.Certificate {
		leaf, err := ca.Issue(testpki.LeafOptions{CommonName: "dp",
			CRLDistributionPoints: []string{url}})
		require.NoError(t, err)
		return []*x509.Certificate{leaf.Cert, ca.Cert}
	}

	t.Run("concurrent first sightings share one fetch", func(t *testing.T) {
		h, url := serveCRL(t, makeCRL(t, ca, nil, time.Now().Add(time.Hour)))
		h.gate = make(chan struct{})
		c := newChecker()
		chain := leafAt(url)
		var wg sync.WaitGroup
		results := make([]Status, 20)
		for i := range results {
			wg.Go(func() { results[i] = c.Check(context.Background(), chain).Status })
		}
		require.Eventually(t, func() bool { return h.hits.Load() >= 1 }, time.Second,
			time.Millisecond)
		time.Sleep(50 * time.Millisecond) // let the others join
		close(h.gate)
		wg.Wait()
		assert.Equal(t, int64(1), h.hits.Load())
		for _, s := range results {
			assert.Equal(t, Good, s)
		}
	})
	t.Run("CRL from another issuer", func(t *testing.T) {
		_, url := serveCRL(t, makeCRL(t, other, nil, time.Now().Add(time.Hour)))
		r := newChecker().Check(context.Background(), leafAt(url))
		assert.Equal(t, Unknown, r.Status)
		assert.Contains(t, r.Detail, "not from the issuer")
	})
	t.Run("server down", func(t *testing.T) {
		h, url := serveCRL(t, nil)
		h.set(nil, http.StatusNotFound)
		r := newChecker().Check(context.Background(), leafAt(url))
		assert.Equal(t, Unknown, r.Status)
	})
	t.Run("off unless asked", func(t *testing.T) {
		h, url := serveCRL(t, makeCRL(t, ca, nil, time.Now().Add(time.Hour)))
		c, err := New(Config{Issuers: issuers})
		require.NoError(t, err)
		assert.Equal(t, Good, c.Check(context.Background(), leafAt(url)).Status)
		assert.Zero(t, h.hits.Load())
	})
}
