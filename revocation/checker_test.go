package revocation

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/cryptobyte"
	casn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// t0 is the pinned "now" of the tests that need a clock.
var t0 = time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)

// revokedAt is the revocation time written into the test CRLs' entries.
var revokedAt = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// revoke is a CRL entry for serial with an RFC 5280 reason code (0 omits
// the reasonCode extension).
func revoke(serial *big.Int, reason int) x509.RevocationListEntry {
	return x509.RevocationListEntry{SerialNumber: serial, RevocationTime: revokedAt,
		ReasonCode: reason}
}

// buildCRL signs a CRL with issuer's key; its number follows thisUpdate.
func buildCRL(t testing.TB, issuer *x509.Certificate, key crypto.Signer, this, next time.Time,
	entries ...x509.RevocationListEntry) []byte {
	t.Helper()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(this.Unix()), ThisUpdate: this, NextUpdate: next,
		RevokedCertificateEntries: entries,
	}, issuer, key)
	require.NoError(t, err)
	return der
}

// caCRL is buildCRL for a testpki CA, due again an hour after this.
func caCRL(t testing.TB, ca *testpki.CA, this time.Time,
	entries ...x509.RevocationListEntry) []byte {
	t.Helper()
	return buildCRL(t, ca.Cert, ca.Key, this, this.Add(time.Hour), entries...)
}

// withoutNextUpdate removes nextUpdate from a CRL made by buildCRL and
// signs it again with key: crypto/x509 cannot make such a CRL.
func withoutNextUpdate(t testing.TB, der []byte, key crypto.Signer) []byte {
	t.Helper()
	input := cryptobyte.String(der)
	var list, tbs, sigAlg cryptobyte.String
	require.True(t, input.ReadASN1(&list, casn1.SEQUENCE) &&
		list.ReadASN1(&tbs, casn1.SEQUENCE) && list.ReadASN1Element(&sigAlg, casn1.SEQUENCE))
	var b cryptobyte.Builder
	b.AddASN1(casn1.SEQUENCE, func(b *cryptobyte.Builder) {
		var elem cryptobyte.String
		var tag casn1.Tag
		for i := 0; i < 4; i++ { // version, signature, issuer, thisUpdate
			require.True(t, tbs.ReadAnyASN1Element(&elem, &tag))
			b.AddBytes(elem)
		}
		require.True(t, tbs.ReadAnyASN1Element(&elem, &tag))
		require.True(t, tag == casn1.UTCTime || tag == casn1.GeneralizedTime, "nextUpdate")
		b.AddBytes(tbs)
	})
	newTBS, err := b.Bytes()
	require.NoError(t, err)
	digest := sha256.Sum256(newTBS)
	sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	require.NoError(t, err)
	var out cryptobyte.Builder
	out.AddASN1(casn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(newTBS)
		b.AddBytes(sigAlg)
		b.AddASN1BitString(sig)
	})
	crl, err := out.Bytes()
	require.NoError(t, err)
	return crl
}

func mustCA(t testing.TB, name string) *testpki.CA {
	t.Helper()
	ca, err := testpki.NewCA(name)
	require.NoError(t, err)
	return ca
}

func mustLeaf(t testing.TB, ca *testpki.CA, cn string, serial *big.Int) *testpki.Leaf {
	t.Helper()
	leaf, err := ca.Issue(testpki.LeafOptions{CommonName: cn, Serial: serial})
	require.NoError(t, err)
	return leaf
}

// chain is leaf, its intermediates, then root: what Check expects.
func chain(leaf *testpki.Leaf, root *testpki.CA) []*x509.Certificate {
	c := append([]*x509.Certificate{leaf.Cert}, leaf.Chain...)
	return append(c, root.Cert)
}

// writeFile writes data to path through a temporary file and a rename.
func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	require.NoError(t, os.WriteFile(tmp, data, 0o644))
	require.NoError(t, os.Rename(tmp, path))
}

// writeCRLFiles writes each CRL to its own file in a new directory.
func writeCRLFiles(t testing.TB, crls ...[]byte) []string {
	t.Helper()
	dir := t.TempDir()
	paths := make([]string, len(crls))
	for i, crl := range crls {
		paths[i] = filepath.Join(dir, "crl"+string(rune('a'+i))+".crl")
		require.NoError(t, os.WriteFile(paths[i], crl, 0o644))
	}
	return paths
}

// paddedPEM is der in PEM, padded with newlines to size bytes, so that
// CRLs of the same size can replace each other with the same stat.
func paddedPEM(t testing.TB, der []byte, size int) []byte {
	t.Helper()
	p := pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der})
	require.LessOrEqual(t, len(p), size)
	for len(p) < size {
		p = append(p, '\n')
	}
	return p
}

type wantStatus struct {
	name   string
	chain  []*x509.Certificate
	status Status
	cert   *x509.Certificate // the certificate Result.Cert names; nil for Good
	reason string            // Entry.Reason, for Revoked
}

func checkAll(t *testing.T, c *Checker, wants []wantStatus) {
	t.Helper()
	for _, w := range wants {
		r := c.Check(context.Background(), w.chain)
		if !assert.Equal(t, w.status, r.Status, "%s: %s", w.name, r.Detail) {
			continue
		}
		switch w.status {
		case Good:
			assert.Nil(t, r.Cert, w.name)
			assert.NoError(t, r.Err(), w.name)
		case Revoked:
			assert.Same(t, w.cert, r.Cert, w.name)
			assert.Equal(t, w.reason, r.Entry.Reason, w.name)
			assert.True(t, revokedAt.Equal(r.Entry.RevokedAt), "%s: revoked at %s", w.name,
				r.Entry.RevokedAt)
			assert.Contains(t, r.Detail, w.cert.SerialNumber.Text(16), w.name)
			assert.ErrorIs(t, r.Err(), ErrRevoked, w.name)
		case Unknown:
			assert.Same(t, w.cert, r.Cert, w.name)
			assert.Contains(t, r.Detail, "stale", w.name)
			assert.ErrorIs(t, r.Err(), ErrUnknown, w.name)
		}
	}
}

func TestCheckerIssuerAndSerial(t *testing.T) {
	shared := big.NewInt(0x1234)
	caA, caB := mustCA(t, "ca A"), mustCA(t, "ca B")
	leafA := mustLeaf(t, caA, "a", shared)
	leafB := mustLeaf(t, caB, "b", shared)
	otherB := mustLeaf(t, caB, "other b", big.NewInt(99))

	root := mustCA(t, "root")
	inter, err := root.Intermediate("inter")
	require.NoError(t, err)
	l1 := mustLeaf(t, inter, "l1", big.NewInt(1))
	l2 := mustLeaf(t, inter, "l2", big.NewInt(2))
	direct := mustLeaf(t, root, "direct", big.NewInt(1)) // same serial as l1, other issuer

	this := time.Now().Add(-time.Minute).Truncate(time.Second)
	crlA := caCRL(t, caA, this, revoke(shared, 1))
	crlAOlder := caCRL(t, caA, this.Add(-time.Hour)) // revokes nothing
	crlB := caCRL(t, caB, this, revoke(otherB.Cert.SerialNumber, 4))
	crlInter := caCRL(t, inter, this, revoke(l1.Cert.SerialNumber, 3))
	crlRootEmpty := caCRL(t, root, this)
	crlRootRevokesInter := caCRL(t, root, this, revoke(inter.Cert.SerialNumber, 2))

	for _, tc := range []struct {
		name    string
		issuers []*x509.Certificate
		crls    [][]byte
		wants   []wantStatus
	}{{
		name:    "same serial, two CAs, CRL of the first",
		issuers: []*x509.Certificate{caA.Cert, caB.Cert},
		crls:    [][]byte{crlA},
		wants: []wantStatus{
			{"A", chain(leafA, caA), Revoked, leafA.Cert, "keyCompromise"},
			{"B", chain(leafB, caB), Good, nil, ""},
		},
	}, {
		name:    "same serial, two CAs, each with a CRL",
		issuers: []*x509.Certificate{caB.Cert, caA.Cert},
		crls:    [][]byte{crlB, crlA},
		wants: []wantStatus{
			{"A", chain(leafA, caA), Revoked, leafA.Cert, "keyCompromise"},
			{"B", chain(leafB, caB), Good, nil, ""},
			{"other B", chain(otherB, caB), Revoked, otherB.Cert, "superseded"},
		},
	}, {
		name:    "two CRLs of one CA, newer first: the newer applies",
		issuers: []*x509.Certificate{caA.Cert},
		crls:    [][]byte{crlA, crlAOlder},
		wants: []wantStatus{
			{"A", chain(leafA, caA), Revoked, leafA.Cert, "keyCompromise"},
		},
	}, {
		name:    "two CRLs of one CA, newer last: the newer applies",
		issuers: []*x509.Certificate{caA.Cert},
		crls:    [][]byte{crlAOlder, crlA},
		wants: []wantStatus{
			{"A", chain(leafA, caA), Revoked, leafA.Cert, "keyCompromise"},
		},
	}, {
		name:    "intermediate's CRL revokes a leaf",
		issuers: []*x509.Certificate{root.Cert, inter.Cert},
		crls:    [][]byte{crlInter, crlRootEmpty},
		wants: []wantStatus{
			{"l1", chain(l1, root), Revoked, l1.Cert, "affiliationChanged"},
			{"l2", chain(l2, root), Good, nil, ""},
			{"direct", chain(direct, root), Good, nil, ""},
		},
	}, {
		name:    "root's CRL revokes the intermediate",
		issuers: []*x509.Certificate{root.Cert, inter.Cert},
		crls:    [][]byte{crlRootRevokesInter},
		wants: []wantStatus{
			{"l1", chain(l1, root), Revoked, inter.Cert, "cACompromise"},
			{"l2", chain(l2, root), Revoked, inter.Cert, "cACompromise"},
			{"direct", chain(direct, root), Good, nil, ""},
			{"intermediate itself", []*x509.Certificate{inter.Cert, root.Cert}, Revoked,
				inter.Cert, "cACompromise"},
		},
	}, {
		name:    "both: the leaf's own revocation is reported first",
		issuers: []*x509.Certificate{root.Cert, inter.Cert},
		crls:    [][]byte{crlRootRevokesInter, crlInter},
		wants: []wantStatus{
			{"l1", chain(l1, root), Revoked, l1.Cert, "affiliationChanged"},
			{"l2", chain(l2, root), Revoked, inter.Cert, "cACompromise"},
		},
	}, {
		name:    "no CRL files",
		issuers: []*x509.Certificate{caA.Cert},
		wants: []wantStatus{
			{"A", chain(leafA, caA), Good, nil, ""},
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(Config{CRLFiles: writeCRLFiles(t, tc.crls...), Issuers: tc.issuers})
			require.NoError(t, err)
			assert.Equal(t, len(tc.crls) > 0, c.Enabled())
			checkAll(t, c, tc.wants)
		})
	}
}

// caWithoutCRLSign makes a self-signed CA whose key usage lacks cRLSign,
// and a twin with the same name, key and key identifier that has it, to
// sign a CRL with (crypto/x509 will not sign with the first). With isCA
// false, the first is no CA at all.
func caWithoutCRLSign(t *testing.T, isCA bool) (bundle, signer *x509.Certificate,
	key crypto.Signer) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	mk := func(usage x509.KeyUsage, isCA bool) *x509.Certificate {
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(time.Now().UnixNano()),
			Subject:      pkix.Name{CommonName: "no crl sign"},
			NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: usage, BasicConstraintsValid: true, IsCA: isCA,
			SubjectKeyId: []byte{1, 2, 3, 4},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
		require.NoError(t, err)
		cert, err := x509.ParseCertificate(der)
		require.NoError(t, err)
		return cert
	}
	usage := x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	if !isCA {
		usage = x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	}
	return mk(usage, isCA),
		mk(usage|x509.KeyUsageCertSign|x509.KeyUsageCRLSign, true), k
}

func TestCheckerNewRefuses(t *testing.T) {
	ca := mustCA(t, "bundle ca")
	impostor := mustCA(t, "bundle ca") // same name, another key
	stranger := mustCA(t, "stranger")
	this := time.Now().Add(-time.Minute)
	good := caCRL(t, ca, this, revoke(big.NewInt(5), 1))
	noSign, noSignTwin, noSignKey := caWithoutCRLSign(t, true)
	notCA, notCATwin, notCAKey := caWithoutCRLSign(t, false)

	// A CRL signed by impostor's key, naming ca's key identifier.
	forged := buildCRL(t, &x509.Certificate{
		RawSubject: ca.Cert.RawSubject, SubjectKeyId: ca.Cert.SubjectKeyId,
		KeyUsage: x509.KeyUsageCRLSign,
	}, impostor.Key, this, this.Add(time.Hour))

	missing := filepath.Join(t.TempDir(), "absent.crl")
	for _, tc := range []struct {
		name  string
		data  []byte // written to a file unless path is set
		path  string
		extra *x509.Certificate // in the bundle, besides ca
		is    error             // what the error wraps, if set
		msg   string            // and what it says
	}{
		{name: "signed by a same-name CA outside the bundle", data: caCRL(t, impostor, this),
			is: errNoIssuerInBundle, msg: "crla.crl"},
		{name: "forged key identifier, wrong key", data: forged,
			msg: "signature does not verify"},
		{name: "issuer not in the bundle", data: caCRL(t, stranger, this),
			is: errNoIssuerInBundle},
		{name: "CA without cRLSign", extra: noSign, msg: "may not sign CRLs",
			data: buildCRL(t, noSignTwin, noSignKey, this, this.Add(time.Hour))},
		{name: "issuer is not a CA", extra: notCA, msg: "may not sign CRLs",
			data: buildCRL(t, notCATwin, notCAKey, this, this.Add(time.Hour))},
		{name: "truncated DER", data: good[:len(good)-10], is: errMalformed},
		{name: "truncated PEM", msg: "no X509 CRL block",
			data: pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: good})[:100]},
		{name: "empty file", data: []byte{}, is: errUnsupportedFormat},
		{name: "garbage", data: []byte("this is not a CRL\n"), is: errUnsupportedFormat},
		{name: "garbage DER-looking", data: []byte{0x30, 0x82, 0xff, 0xff, 1, 2, 3},
			is: errMalformed},
		{name: "certificate PEM", data: ca.CertPEM(), msg: "no X509 CRL block"},
		{name: "missing file", path: missing, is: fs.ErrNotExist, msg: "absent.crl"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := tc.path
			if path == "" {
				path = writeCRLFiles(t, tc.data)[0]
			}
			// A good CRL next to it, of a CA in the bundle, does not save it.
			files := append(writeCRLFiles(t, good), path)
			issuers := []*x509.Certificate{ca.Cert}
			if tc.extra != nil {
				issuers = append(issuers, tc.extra)
			}
			c, err := New(Config{CRLFiles: files, Issuers: issuers})
			require.Error(t, err)
			assert.Nil(t, c)
			if tc.is != nil {
				assert.ErrorIs(t, err, tc.is)
			}
			assert.ErrorContains(t, err, tc.msg)
		})
	}

	t.Run("empty bundle", func(t *testing.T) {
		_, err := New(Config{CRLFiles: writeCRLFiles(t, good)})
		assert.ErrorIs(t, err, errNoIssuerInBundle)
	})
	t.Run("control: the good CRL loads", func(t *testing.T) {
		_, err := New(Config{CRLFiles: writeCRLFiles(t, good),
			Issuers: []*x509.Certificate{impostor.Cert, ca.Cert}})
		require.NoError(t, err)
	})
	t.Run("control: cRLSign twin loads", func(t *testing.T) {
		_, err := New(Config{CRLFiles: writeCRLFiles(t, buildCRL(t, noSignTwin, noSignKey, this,
			this.Add(time.Hour))), Issuers: []*x509.Certificate{noSignTwin}})
		require.NoError(t, err)
	})
}

// reloadEnv is a Checker over one CRL file of ca: v1 revokes a.
type reloadEnv struct {
	ca, impostor *testpki.CA
	a, b, c      *testpki.Leaf
	path         string
	checker      *Checker
	changes      atomic.Int32
}

const crlFileSize = 2048

// newReloadEnv has setup write the first CRL, issued two hours ago and
// revoking a, and return the path to configure.
func newReloadEnv(t *testing.T, poll time.Duration,
	setup func(t *testing.T, crl []byte) string) *reloadEnv {
	t.Helper()
	e := &reloadEnv{ca: mustCA(t, "reload ca"), impostor: mustCA(t, "reload ca")}
	e.a = mustLeaf(t, e.ca, "a", big.NewInt(0xa))
	e.b = mustLeaf(t, e.ca, "b", big.NewInt(0xb))
	e.c = mustLeaf(t, e.ca, "c", big.NewInt(0xc))
	e.path = setup(t, e.crl(t, -2*time.Hour, e.a))
	var err error
	e.checker, err = New(Config{CRLFiles: []string{e.path},
		Issuers: []*x509.Certificate{e.ca.Cert}, PollInterval: poll,
		OnChange: func() { e.changes.Add(1) }})
	require.NoError(t, err)
	return e
}

// plainFile writes the first CRL to a new directory.
func plainFile(t *testing.T, crl []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.crl")
	require.NoError(t, os.WriteFile(path, crl, 0o644))
	return path
}

// crl is a CRL of e.ca issued age ago (negative), revoking leaves, as
// PEM of crlFileSize bytes.
func (e *reloadEnv) crl(t testing.TB, age time.Duration, leaves ...*testpki.Leaf) []byte {
	t.Helper()
	return e.signed(t, e.ca, age, leaves...)
}

func (e *reloadEnv) signed(t testing.TB, by *testpki.CA, age time.Duration,
	leaves ...*testpki.Leaf) []byte {
	t.Helper()
	var entries []x509.RevocationListEntry
	for _, l := range leaves {
		entries = append(entries, revoke(l.Cert.SerialNumber, 1))
	}
	this := time.Now().Add(age).Truncate(time.Second)
	return paddedPEM(t, buildCRL(t, by.Cert, by.Key, this, this.Add(24*time.Hour),
		entries...), crlFileSize)
}

// expect checks which of a, b, c are revoked.
func (e *reloadEnv) expect(t *testing.T, revoked ...*testpki.Leaf) {
	t.Helper()
	var wants []wantStatus
	for _, l := range []*testpki.Leaf{e.a, e.b, e.c} {
		w := wantStatus{name: l.Cert.Subject.CommonName, chain: chain(l, e.ca), status: Good}
		for _, r := range revoked {
			if r == l {
				w.status, w.cert, w.reason = Revoked, l.Cert, "keyCompromise"
			}
		}
		wants = append(wants, w)
	}
	checkAll(t, e.checker, wants)
}

func TestCheckerReload(t *testing.T) {
	for _, tc := range []struct {
		name         string
		write        func(t *testing.T, e *reloadEnv)
		force        bool
		wantChanged  bool
		wantFailures int64
		// failsEveryPoll: the failure is counted again at each poll, not
		// once per change of the file (so far only a missing file).
		failsEveryPoll bool
		wantRevoked    func(e *reloadEnv) []*testpki.Leaf
	}{{
		name:  "nothing changed",
		write: func(t *testing.T, e *reloadEnv) {},
	}, {
		name: "newer CRL by atomic rename",
		write: func(t *testing.T, e *reloadEnv) {
			writeFile(t, e.path, e.crl(t, -time.Hour, e.a, e.b))
		},
		wantChanged: true,
		wantRevoked: func(e *reloadEnv) []*testpki.Leaf { return []*testpki.Leaf{e.a, e.b} },
	}, {
		name: "newer CRL written in place",
		write: func(t *testing.T, e *reloadEnv) {
			data := e.crl(t, -time.Hour, e.b)
			// One byte shorter: a size the stat cannot miss.
			require.NoError(t, os.WriteFile(e.path, data[:len(data)-1], 0o644))
		},
		wantChanged: true,
		wantRevoked: func(e *reloadEnv) []*testpki.Leaf { return []*testpki.Leaf{e.b} },
	}, {
		name: "truncated in place",
		write: func(t *testing.T, e *reloadEnv) {
			der := buildCRL(t, e.ca.Cert, e.ca.Key, time.Now(), time.Now().Add(time.Hour),
				revoke(e.b.Cert.SerialNumber, 1))
			require.NoError(t, os.WriteFile(e.path, der[:len(der)/2], 0o644))
		},
		wantFailures: 1,
	}, {
		name: "truncated PEM in place",
		write: func(t *testing.T, e *reloadEnv) {
			require.NoError(t, os.WriteFile(e.path, e.crl(t, 0, e.b)[:300], 0o644))
		},
		wantFailures: 1,
	}, {
		name: "emptied in place",
		write: func(t *testing.T, e *reloadEnv) {
			require.NoError(t, os.WriteFile(e.path, nil, 0o644))
		},
		wantFailures: 1,
	}, {
		name: "corrupt byte in place",
		write: func(t *testing.T, e *reloadEnv) {
			der := buildCRL(t, e.ca.Cert, e.ca.Key, time.Now(), time.Now().Add(time.Hour),
				revoke(e.b.Cert.SerialNumber, 1))
			der[len(der)-20] ^= 0x40 // in the signature
			require.NoError(t, os.WriteFile(e.path, der, 0o644))
		},
		wantFailures: 1,
	}, {
		name: "signed by the wrong key",
		write: func(t *testing.T, e *reloadEnv) {
			writeFile(t, e.path, e.signed(t, e.impostor, -time.Hour, e.b, e.c))
		},
		wantFailures: 1,
	}, {
		name: "older CRL replaces a newer one",
		write: func(t *testing.T, e *reloadEnv) {
			writeFile(t, e.path, e.crl(t, -3*time.Hour, e.b))
		},
		wantFailures: 1,
	}, {
		name: "file removed",
		write: func(t *testing.T, e *reloadEnv) {
			require.NoError(t, os.Remove(e.path))
		},
		wantFailures: 1,
	}, {
		name:        "SIGHUP re-reads an unchanged file",
		force:       true,
		write:       func(t *testing.T, e *reloadEnv) {},
		wantChanged: true,
	}, {
		name:  "SIGHUP sees a change the stat misses",
		force: true,
		write: func(t *testing.T, e *reloadEnv) {
			before, err := os.Stat(e.path)
			require.NoError(t, err)
			f, err := os.OpenFile(e.path, os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.Write(e.crl(t, -time.Hour, e.c)) // same size, same inode
			require.NoError(t, err)
			require.NoError(t, f.Close())
			require.NoError(t, os.Chtimes(e.path, before.ModTime(), before.ModTime()))
			require.False(t, e.checker.Reload(false), "the stat did not change")
			e.expect(t, e.a)
		},
		wantChanged: true,
		wantRevoked: func(e *reloadEnv) []*testpki.Leaf { return []*testpki.Leaf{e.c} },
	}, {
		name:  "SIGHUP with a corrupt file",
		force: true,
		write: func(t *testing.T, e *reloadEnv) {
			require.NoError(t, os.WriteFile(e.path, []byte("junk"), 0o644))
		},
		wantFailures: 1,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			e := newReloadEnv(t, time.Hour, plainFile)
			e.expect(t, e.a)
			tc.write(t, e)
			assert.Equal(t, tc.wantChanged, e.checker.Reload(tc.force))
			wantChanges := int32(0)
			if tc.wantChanged {
				wantChanges = 1
			}
			assert.Equal(t, wantChanges, e.changes.Load(), "OnChange calls")
			assert.Equal(t, tc.wantFailures, e.checker.ReloadFailures())
			if tc.wantRevoked != nil {
				e.expect(t, tc.wantRevoked(e)...)
			} else {
				e.expect(t, e.a) // the last good CRL stays in force
			}

			// Polling again without a change neither retries nor notifies.
			assert.False(t, e.checker.Reload(false))
			assert.Equal(t, wantChanges, e.changes.Load(), "OnChange calls")
			if tc.failsEveryPoll {
				tc.wantFailures++
			}
			assert.Equal(t, tc.wantFailures, e.checker.ReloadFailures())

			// A good, newer file is picked up again.
			writeFile(t, e.path, e.crl(t, -time.Minute, e.a, e.b, e.c))
			assert.True(t, e.checker.Reload(false))
			assert.Equal(t, wantChanges+1, e.changes.Load(), "OnChange calls")
			assert.Equal(t, tc.wantFailures, e.checker.ReloadFailures())
			e.expect(t, e.a, e.b, e.c)
		})
	}
}

// TestCheckerRun replaces the CRL file while Run polls it.
func TestCheckerRun(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup writes the first CRL and returns the path to configure;
		// swap replaces it.
		setup func(t *testing.T, dir string, crl []byte) string
		swap  func(t *testing.T, dir string, crl []byte)
	}{{
		name: "atomic rename",
		setup: func(t *testing.T, dir string, crl []byte) string {
			path := filepath.Join(dir, "ca.crl")
			require.NoError(t, os.WriteFile(path, crl, 0o644))
			return path
		},
		swap: func(t *testing.T, dir string, crl []byte) {
			writeFile(t, filepath.Join(dir, "ca.crl"), crl)
		},
	}, {
		name: "kubernetes symlink swap",
		setup: func(t *testing.T, dir string, crl []byte) string {
			require.NoError(t, os.Mkdir(filepath.Join(dir, "..2026_v1"), 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "..2026_v1", "ca.crl"), crl,
				0o644))
			require.NoError(t, os.Symlink("..2026_v1", filepath.Join(dir, "..data")))
			path := filepath.Join(dir, "ca.crl")
			require.NoError(t, os.Symlink(filepath.Join("..data", "ca.crl"), path))
			return path
		},
		swap: func(t *testing.T, dir string, crl []byte) {
			require.NoError(t, os.Mkdir(filepath.Join(dir, "..2026_v2"), 0o755))
			require.NoError(t, os.WriteFile(filepath.Join(dir, "..2026_v2", "ca.crl"), crl,
				0o644))
			tmp := filepath.Join(dir, "..data_tmp")
			require.NoError(t, os.Symlink("..2026_v2", tmp))
			require.NoError(t, os.Rename(tmp, filepath.Join(dir, "..data")))
			require.NoError(t, os.RemoveAll(filepath.Join(dir, "..2026_v1")))
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			e := newReloadEnv(t, 10*time.Millisecond, func(t *testing.T, crl []byte) string {
				return tc.setup(t, dir, crl)
			})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); e.checker.Run(ctx) }()
			t.Cleanup(func() {
				cancel()
				select {
				case <-done:
				case <-time.After(5 * time.Second):
					t.Error("Run did not return after its context ended")
				}
			})

			e.expect(t, e.a)
			tc.swap(t, dir, e.crl(t, -time.Hour, e.a, e.b))
			require.Eventually(t, func() bool { return e.changes.Load() > 0 },
				5*time.Second, 5*time.Millisecond)
			e.expect(t, e.a, e.b)
			assert.Equal(t, int32(1), e.changes.Load(), "OnChange calls")
			assert.Zero(t, e.checker.ReloadFailures())
		})
	}
}

func TestCheckerStale(t *testing.T) {
	ca := mustCA(t, "stale ca")
	other := mustCA(t, "ca without crl")
	revoked := mustLeaf(t, ca, "revoked", big.NewInt(0x10))
	good := mustLeaf(t, ca, "good", big.NewInt(0x11))
	elsewhere := mustLeaf(t, other, "elsewhere", big.NewInt(0x10))

	usable := []wantStatus{
		{"revoked", chain(revoked, ca), Revoked, revoked.Cert, "keyCompromise"},
		{"good", chain(good, ca), Good, nil, ""},
		{"other issuer", chain(elsewhere, other), Good, nil, ""},
	}
	stale := []wantStatus{
		{"revoked", chain(revoked, ca), Unknown, revoked.Cert, ""},
		{"good", chain(good, ca), Unknown, good.Cert, ""},
		{"other issuer", chain(elsewhere, other), Good, nil, ""},
	}
	entry := revoke(revoked.Cert.SerialNumber, 1)
	for _, tc := range []struct {
		name   string
		next   time.Duration // nextUpdate, from t0
		noNext bool          // a CRL without nextUpdate, issued a year ago
		grace  time.Duration
		wants  []wantStatus
	}{
		{name: "fresh", next: time.Hour, wants: usable},
		{name: "at nextUpdate", next: 0, wants: usable},
		{name: "a second past nextUpdate", next: -time.Second, wants: stale},
		{name: "an hour past nextUpdate", next: -time.Hour, wants: stale},
		{name: "within the grace", next: -time.Hour, grace: 2 * time.Hour, wants: usable},
		{name: "at the end of the grace", next: -time.Hour, grace: time.Hour, wants: usable},
		{name: "past the grace", next: -time.Hour, grace: time.Hour - time.Second,
			wants: stale},
		{name: "no nextUpdate", noNext: true, wants: usable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			der := buildCRL(t, ca.Cert, ca.Key, t0.Add(tc.next-2*time.Hour), t0.Add(tc.next),
				entry)
			if tc.noNext {
				der = withoutNextUpdate(t, buildCRL(t, ca.Cert, ca.Key,
					t0.Add(-365*24*time.Hour), t0.Add(-364*24*time.Hour), entry), ca.Key)
			}
			c, err := New(Config{CRLFiles: writeCRLFiles(t, der),
				Issuers: []*x509.Certificate{ca.Cert, other.Cert}, StaleGrace: tc.grace,
				Clock: func() time.Time { return t0 }})
			require.NoError(t, err)
			crl := c.index.Load().byKey[string(ca.Cert.RawSubjectPublicKeyInfo)]
			require.NotNil(t, crl)
			assert.Equal(t, tc.noNext, crl.NextUpdate.IsZero())
			checkAll(t, c, tc.wants)
		})
	}
}

// TestCheckerOpenSSL revokes with the real `openssl ca` and loads its CRL.
func TestCheckerOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	root := mustCA(t, "openssl root")
	ossl, err := root.OpenSSL(filepath.Join(t.TempDir(), "ca"))
	require.NoError(t, err)
	big20 := new(big.Int).Add(new(big.Int).Lsh(big.NewInt(1), 158), big.NewInt(0xbeef))
	leaves := []struct {
		name   string
		serial *big.Int
		reason string // "" for not revoked
	}{
		{"serial 1", big.NewInt(1), "keyCompromise"},
		{"serial 0x7f", big.NewInt(0x7f), ""},
		{"serial 0x80 (leading zero in DER)", big.NewInt(0x80), "keyCompromise"},
		{"serial 0xff00", big.NewInt(0xff00), "superseded"},
		{"serial 0x100", big.NewInt(0x100), ""},
		{"serial 2^64", new(big.Int).Lsh(big.NewInt(1), 64), "cessationOfOperation"},
		{"20-octet serial", big20, "keyCompromise"},
		{"20-octet serial, off by one", new(big.Int).Add(big20, big.NewInt(1)), ""},
		{"random serial", nil, "affiliationChanged"},
		{"random serial, good", nil, ""},
	}
	issued := make([]*testpki.Leaf, len(leaves))
	for i, l := range leaves {
		issued[i] = mustLeaf(t, root, l.name, l.serial)
		if l.reason != "" {
			require.NoError(t, ossl.Revoke(issued[i], l.reason))
		}
	}
	path := filepath.Join(t.TempDir(), "ca.crl")
	require.NoError(t, ossl.GenCRL(path, time.Hour))
	start := time.Now()
	c, err := New(Config{CRLFiles: []string{path}, Issuers: []*x509.Certificate{root.Cert}})
	require.NoError(t, err)
	for i, l := range leaves {
		t.Run(l.name, func(t *testing.T) {
			r := c.Check(context.Background(), chain(issued[i], root))
			if l.reason == "" {
				assert.Equal(t, Good, r.Status, r.Detail)
				return
			}
			require.Equal(t, Revoked, r.Status)
			assert.Same(t, issued[i].Cert, r.Cert)
			assert.Equal(t, l.reason, r.Entry.Reason)
			assert.WithinDuration(t, start, r.Entry.RevokedAt, time.Minute)
			assert.ErrorIs(t, r.Err(), ErrRevoked)
		})
	}

	t.Run("reload picks up a new openssl CRL", func(t *testing.T) {
		require.NoError(t, ossl.Revoke(issued[1], "keyCompromise"))
		tmp := filepath.Join(t.TempDir(), "new.crl")
		require.NoError(t, ossl.GenCRL(tmp, time.Hour))
		data, err := os.ReadFile(tmp)
		require.NoError(t, err)
		writeFile(t, path, data)
		require.True(t, c.Reload(false))
		assert.Zero(t, c.ReloadFailures())
		r := c.Check(context.Background(), chain(issued[1], root))
		require.Equal(t, Revoked, r.Status)
		assert.Equal(t, "keyCompromise", r.Entry.Reason)
	})
}

func TestResultErr(t *testing.T) {
	for _, tc := range []struct {
		status      Status
		wantRevoked bool
		wantUnknown bool
	}{
		{Good, false, false},
		{Revoked, true, false},
		{Unknown, false, true},
	} {
		t.Run(tc.status.String(), func(t *testing.T) {
			err := Result{Status: tc.status, Detail: "some detail"}.Err()
			if tc.status == Good {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Equal(t, tc.wantRevoked, errors.Is(err, ErrRevoked))
			assert.Equal(t, tc.wantUnknown, errors.Is(err, ErrUnknown))
			assert.Contains(t, err.Error(), "some detail")
		})
	}
}
