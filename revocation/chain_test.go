package revocation

import (
	"context"
	"crypto/x509"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestIntermediateInBundle: when the bundle holds an intermediate, Go ends
// a leaf-only chain at it; its root's CRL must still apply to it.
func TestIntermediateInBundle(t *testing.T) {
	root, err := testpki.NewCA("chain root")
	require.NoError(t, err)
	inter, err := root.Intermediate("chain inter")
	require.NoError(t, err)
	leaf, err := inter.Client("leaf-only")
	require.NoError(t, err)
	dir := t.TempDir()
	rootCRL := filepath.Join(dir, "root.crl")
	require.NoError(t, os.WriteFile(rootCRL,
		makeCRL(t, root, []*big.Int{inter.Cert.SerialNumber}, time.Now().Add(time.Hour)), 0o644))

	c, err := New(Config{CRLFiles: []string{rootCRL},
		Issuers: []*x509.Certificate{root.Cert, inter.Cert}})
	require.NoError(t, err)
	for _, chain := range [][]*x509.Certificate{
		{leaf.Cert, inter.Cert},            // anchored at the intermediate
		{leaf.Cert, inter.Cert, root.Cert}, // anchored at the root
	} {
		r := c.Check(context.Background(), chain)
		assert.Equal(t, Revoked, r.Status, "chain of %d", len(chain))
		assert.Same(t, inter.Cert, r.Cert)
		assert.Equal(t, Revoked, c.CheckCRLs(chain).Status)
	}
}

// TestCRLFileKeepsItsIssuer: another CA's (newer) CRL written over a CRL
// file is refused, so the first CA's revocations stay in force.
func TestCRLFileKeepsItsIssuer(t *testing.T) {
	a, err := testpki.NewCA("issuer a")
	require.NoError(t, err)
	b, err := testpki.NewCA("issuer b")
	require.NoError(t, err)
	leaf, err := a.Client("revoked-by-a")
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "a.crl")
	require.NoError(t, os.WriteFile(path,
		makeCRL(t, a, []*big.Int{leaf.Cert.SerialNumber}, time.Now().Add(time.Hour)), 0o644))
	c, err := New(Config{CRLFiles: []string{path},
		Issuers: []*x509.Certificate{a.Cert, b.Cert}})
	require.NoError(t, err)

	tmp := path + ".new"
	require.NoError(t, os.WriteFile(tmp, makeCRL(t, b, nil, time.Now().Add(2*time.Hour)), 0o644))
	require.NoError(t, os.Rename(tmp, path))
	assert.False(t, c.Reload(false))
	assert.Equal(t, int64(1), c.ReloadFailures())
	assert.Equal(t, Revoked, c.Check(context.Background(),
		[]*x509.Certificate{leaf.Cert, a.Cert}).Status)
}

// TestDistributionPointBackoff: a distribution point that failed is not
// asked again at once; its clients are refused meanwhile.
func TestDistributionPointBackoff(t *testing.T) {
	ca, err := testpki.NewCA("dp backoff")
	require.NoError(t, err)
	h, url := serveCRL(t, nil)
	h.set(nil, http.StatusServiceUnavailable)
	leaf, err := ca.Issue(testpki.LeafOptions{CommonName: "dp",
		CRLDistributionPoints: []string{url}})
	require.NoError(t, err)
	c, err := New(Config{FetchDistributionPoints: true, Issuers: []*x509.Certificate{ca.Cert}})
	require.NoError(t, err)
	chain := []*x509.Certificate{leaf.Cert, ca.Cert}
	for i := 0; i < 3; i++ {
		r := c.Check(context.Background(), chain)
		assert.Equal(t, Unknown, r.Status)
	}
	assert.Equal(t, int64(1), h.hits.Load(), "a failed distribution point is asked once")
	assert.Equal(t, int64(1), c.ReloadFailures())
}
