// Package testpki builds throwaway certificate authorities and leaf
// certificates at run time, for tests and the demo. Nothing it makes is
// meant to outlive the process that made it.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CA is a certificate authority, root or intermediate.
type CA struct {
	Cert   *x509.Certificate
	Key    crypto.Signer
	parent *CA
}

// Leaf is an end-entity certificate with its key and the chain of
// intermediates up to (not including) the root.
type Leaf struct {
	Cert  *x509.Certificate
	Key   crypto.Signer
	Chain []*x509.Certificate
}

// LeafOptions describes a leaf. Zero times mean "valid from an hour ago for
// a day"; a zero ExtKeyUsage means clientAuth.
type LeafOptions struct {
	CommonName  string
	OU          []string
	DNSNames    []string
	IPs         []net.IP
	ExtKeyUsage []x509.ExtKeyUsage
	NotBefore   time.Time
	NotAfter    time.Time
	Serial      *big.Int
	// CRLDistributionPoints and OCSPServer are URLs for revocation checks.
	CRLDistributionPoints []string
	OCSPServer            []string
}

// NewCA makes a self-signed root valid from an hour ago for a day.
func NewCA(name string) (*CA, error) {
	return newCA(name, nil)
}

// Intermediate makes a CA signed by ca.
func (ca *CA) Intermediate(name string) (*CA, error) {
	return newCA(name, ca)
}

func newCA(name string, parent *CA) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"nsqtls-proxy test"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	signerCert, signerKey := tmpl, crypto.Signer(key)
	if parent != nil {
		signerCert, signerKey = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signerKey)
	if err != nil {
		return nil, fmt.Errorf("testpki: create CA %q: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, parent: parent}, nil
}

// Issue signs a leaf certificate.
func (ca *CA) Issue(o LeafOptions) (*Leaf, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: o.Serial,
		Subject:      pkix.Name{CommonName: o.CommonName, OrganizationalUnit: o.OU},
		NotBefore:    o.NotBefore,
		NotAfter:     o.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  o.ExtKeyUsage,
		DNSNames:     o.DNSNames,
		IPAddresses:  o.IPs,

		CRLDistributionPoints: o.CRLDistributionPoints,
		OCSPServer:            o.OCSPServer,
	}
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = randomSerial()
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = now.Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = now.Add(24 * time.Hour)
	}
	if tmpl.ExtKeyUsage == nil {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("testpki: issue %q: %w", o.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	var chain []*x509.Certificate
	for c := ca; c.parent != nil; c = c.parent {
		chain = append(chain, c.Cert)
	}
	return &Leaf{Cert: cert, Key: key, Chain: chain}, nil
}

// Server issues a serverAuth certificate for localhost and 127.0.0.1/::1.
func (ca *CA) Server(name string) (*Leaf, error) {
	return ca.Issue(LeafOptions{
		CommonName:  name,
		DNSNames:    []string{"localhost"},
		IPs:         []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

// Client issues a clientAuth certificate.
func (ca *CA) Client(cn string) (*Leaf, error) {
	return ca.Issue(LeafOptions{CommonName: cn})
}

// Pool is a pool holding only ca.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// CertPEM is ca's certificate in PEM.
func (ca *CA) CertPEM() []byte { return certPEM(ca.Cert) }

// TLSCertificate is l with its chain, for a tls.Config.
func (l *Leaf) TLSCertificate() tls.Certificate {
	tc := tls.Certificate{PrivateKey: l.Key, Leaf: l.Cert}
	tc.Certificate = append(tc.Certificate, l.Cert.Raw)
	for _, c := range l.Chain {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc
}

// CertPEM is the leaf followed by its intermediates, in PEM.
func (l *Leaf) CertPEM() []byte {
	out := certPEM(l.Cert)
	for _, c := range l.Chain {
		out = append(out, certPEM(c)...)
	}
	return out
}

// KeyPEM is the leaf's private key in PKCS#8 PEM.
func (l *Leaf) KeyPEM() []byte {
	der, err := x509.MarshalPKCS8PrivateKey(l.Key)
	if err != nil {
		panic(fmt.Sprintf("testpki: marshal key: %v", err)) // our own ECDSA key
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// WriteFiles writes dir/name.pem (leaf and chain) and dir/name-key.pem and
// returns their paths.
func (l *Leaf) WriteFiles(dir, name string) (certPath, keyPath string, err error) {
	certPath = filepath.Join(dir, name+".pem")
	keyPath = filepath.Join(dir, name+"-key.pem")
	if err := os.WriteFile(certPath, l.CertPEM(), 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyPath, l.KeyPEM(), 0o600); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

func certPEM(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(fmt.Sprintf("testpki: serial: %v", err)) // crypto/rand does not fail on Linux
	}
	return n.Add(n, big.NewInt(1))
}
