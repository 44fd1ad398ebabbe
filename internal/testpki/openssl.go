package testpki

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// OpenSSLCA runs the real `openssl ca` over a CA made by this package: its
// index file, revocations and CRLs are openssl's own.
type OpenSSLCA struct {
	*CA
	Dir  string
	conf string
}

// OpenSSL writes ca's certificate, key and an `openssl ca` configuration
// with an empty index into dir.
func (ca *CA) OpenSSL(dir string) (*OpenSSLCA, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	keyPEM := (&Leaf{Key: ca.Key}).KeyPEM()
	files := map[string][]byte{
		"ca.pem":     ca.CertPEM(),
		"ca-key.pem": keyPEM,
		"index.txt":  nil,
		"crlnumber":  []byte("01\n"),
		"openssl.cnf": []byte(fmt.Sprintf(`[ ca ]
default_ca = CA_default
[ CA_default ]
dir = %s
database = $dir/index.txt
crlnumber = $dir/crlnumber
certificate = $dir/ca.pem
private_key = $dir/ca-key.pem
default_md = sha256
default_crl_days = 1
unique_subject = no
policy = policy_any
[ policy_any ]
commonName = supplied
`, dir)),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	return &OpenSSLCA{CA: ca, Dir: dir, conf: filepath.Join(dir, "openssl.cnf")}, nil
}

// Revoke records leaf as revoked in the index, with an RFC 5280 reason
// name such as keyCompromise.
func (o *OpenSSLCA) Revoke(leaf *Leaf, reason string) error {
	path, err := o.writeLeaf(leaf)
	if err != nil {
		return err
	}
	return o.run("ca", "-config", o.conf, "-revoke", path, "-crl_reason", reason)
}

// Valid records leaf as valid in the index, as OCSP answers need.
func (o *OpenSSLCA) Valid(leaf *Leaf) error {
	path, err := o.writeLeaf(leaf)
	if err != nil {
		return err
	}
	return o.run("ca", "-config", o.conf, "-valid", path)
}

// GenCRL writes a PEM CRL from the index to path, due again after
// validFor (whole seconds).
func (o *OpenSSLCA) GenCRL(path string, validFor time.Duration) error {
	secs := strconv.Itoa(max(1, int(validFor/time.Second)))
	return o.run("ca", "-config", o.conf, "-gencrl", "-crlsec", secs, "-out", path)
}

func (o *OpenSSLCA) writeLeaf(leaf *Leaf) (string, error) {
	path := filepath.Join(o.Dir, leaf.Cert.SerialNumber.Text(16)+".pem")
	return path, os.WriteFile(path, certPEM(leaf.Cert), 0o644)
}

func (o *OpenSSLCA) run(args ...string) error {
	out, err := exec.Command("openssl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("testpki: openssl %v: %w\n%s", args, err, out)
	}
	return nil
}
