package revocation

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func makeCRL(t testing.TB, ca *testpki.CA, serials []*big.Int, next time.Time) []byte {
	t.Helper()
	return makeCRLSignedBy(t, ca.Cert, ca.Key, serials, next)
}

func makeCRLSignedBy(t testing.TB, issuer *x509.Certificate, key crypto.Signer,
	serials []*big.Int, next time.Time) []byte {
	t.Helper()
	entries := make([]x509.RevocationListEntry, len(serials))
	now := time.Now()
	for i, s := range serials {
		entries[i] = x509.RevocationListEntry{SerialNumber: s, RevocationTime: now.Add(-time.Minute),
			ReasonCode: 1}
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(7), ThisUpdate: now.Add(-time.Hour), NextUpdate: next,
		RevokedCertificateEntries: entries,
	}, issuer, key)
	require.NoError(t, err)
	return der
}

func TestParseCRL(t *testing.T) {
	ca, err := testpki.NewCA("crl root")
	require.NoError(t, err)
	other, err := testpki.NewCA("crl root") // same name, different key
	require.NoError(t, err)
	revoked := []*big.Int{big.NewInt(1), big.NewInt(0x80), new(big.Int).Lsh(big.NewInt(1), 150)}
	der := makeCRL(t, ca, revoked, time.Now().Add(time.Hour))

	for _, form := range []struct {
		name string
		data []byte
	}{{"DER", der}, {"PEM", pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})}} {
		t.Run(form.name, func(t *testing.T) {
			crl, err := ParseCRL(form.data, []*x509.Certificate{other.Cert, ca.Cert})
			require.NoError(t, err)
			assert.Same(t, ca.Cert, crl.Issuer)
			assert.Equal(t, 3, crl.Len())
			assert.Equal(t, int64(7), crl.Number.Int64())
			for _, s := range revoked {
				e, ok := crl.Lookup(s)
				require.True(t, ok, "serial %x", s)
				assert.Equal(t, "keyCompromise", e.Reason)
			}
			for _, s := range []int64{0, 2, 0x7f, 0x8000} {
				_, ok := crl.Lookup(big.NewInt(s))
				assert.False(t, ok, "serial %x", s)
			}
		})
	}

	t.Run("wrong signer", func(t *testing.T) {
		_, err := ParseCRL(der, []*x509.Certificate{other.Cert})
		assert.ErrorIs(t, err, errNoIssuerInBundle)
	})
	t.Run("unknown issuer", func(t *testing.T) {
		stranger, err := testpki.NewCA("stranger")
		require.NoError(t, err)
		_, err = ParseCRL(der, []*x509.Certificate{stranger.Cert})
		assert.ErrorIs(t, err, errNoIssuerInBundle)
	})
	t.Run("truncated", func(t *testing.T) {
		for _, n := range []int{0, 1, 10, len(der) / 2, len(der) - 1} {
			_, err := ParseCRL(der[:n], []*x509.Certificate{ca.Cert})
			assert.Error(t, err, "%d bytes", n)
		}
	})
	t.Run("tampered", func(t *testing.T) {
		bad := append([]byte(nil), der...)
		bad[len(bad)/2] ^= 1
		_, err := ParseCRL(bad, []*x509.Certificate{ca.Cert})
		assert.Error(t, err)
	})
	t.Run("empty list", func(t *testing.T) {
		crl, err := ParseCRL(makeCRL(t, ca, nil, time.Now().Add(time.Hour)),
			[]*x509.Certificate{ca.Cert})
		require.NoError(t, err)
		assert.Equal(t, 0, crl.Len())
		_, ok := crl.Lookup(big.NewInt(1))
		assert.False(t, ok)
	})
}

// BenchmarkCRL loads a CRL of a million entries and looks serials up.
func BenchmarkCRL(b *testing.B) {
	ca, err := testpki.NewCA("big crl")
	require.NoError(b, err)
	const n = 1_000_000
	serials := make([]*big.Int, n)
	for i := range serials {
		serials[i] = new(big.Int).Lsh(big.NewInt(int64(i)*2654435761+1), 64)
	}
	der := makeCRL(b, ca, serials, time.Now().Add(time.Hour))
	issuers := []*x509.Certificate{ca.Cert}

	b.Run("load_1M", func(b *testing.B) {
		b.ReportAllocs()
		var kept *CRL
		var before, after runtime.MemStats
		for i := 0; i < b.N; i++ {
			kept = nil
			runtime.GC()
			runtime.ReadMemStats(&before)
			if kept, err = ParseCRL(der, issuers); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(kept.Len()),
			"live-B/entry")
	})
	crl, err := ParseCRL(der, issuers)
	require.NoError(b, err)
	b.Run("lookup_hit", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, ok := crl.Lookup(serials[i%n]); !ok {
				b.Fatal("miss")
			}
		}
	})
	// What a handshake pays: Checker.Check on a client chain, against the
	// 1M-entry CRL of its issuer and against no CRL at all.
	leaf, err := ca.Client("bench")
	require.NoError(b, err)
	chain := []*x509.Certificate{leaf.Cert, ca.Cert}
	path := filepath.Join(b.TempDir(), "big.crl")
	require.NoError(b, os.WriteFile(path, der, 0o644))
	for _, files := range [][]string{nil, {path}} {
		checker, err := New(Config{CRLFiles: files, Issuers: issuers})
		require.NoError(b, err)
		b.Run(fmt.Sprintf("check_chain_crls=%d", len(files)), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if r := checker.Check(context.Background(), chain); r.Status != Good {
					b.Fatal(r.Detail)
				}
			}
		})
	}
	miss := new(big.Int).Lsh(big.NewInt(3), 100)
	b.Run("lookup_miss", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; i < b.N; i++ {
			if _, ok := crl.Lookup(miss); ok {
				b.Fatal("hit")
			}
		}
	})
}
