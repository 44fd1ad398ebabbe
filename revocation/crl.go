package revocation

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"

	"golang.org/x/crypto/cryptobyte"
	casn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// CRL is a verified certificate revocation list.
type CRL struct {
	Issuer     *x509.Certificate // the CA of the bundle whose key signed it
	Number     *big.Int
	ThisUpdate time.Time
	NextUpdate time.Time // zero when the CRL gives none
	revoked    revokedSet
}

// Entry is a revocation found in a CRL.
type Entry struct {
	Reason    string // RFC 5280 reason name; "" when the CRL gives none
	RevokedAt time.Time
}

// Len is the number of revoked serials.
func (c *CRL) Len() int { return c.revoked.len() }

// Lookup reports whether serial is on the list. The caller has checked
// that the certificate was issued by c.Issuer.
func (c *CRL) Lookup(serial *big.Int) (Entry, bool) {
	var buf [32]byte
	e, ok := c.revoked.lookup(serialKeyInto(buf[:0], serial))
	if !ok {
		return Entry{}, false
	}
	return Entry{Reason: reasonName(e.reason), RevokedAt: time.Unix(e.at, 0).UTC()}, true
}

var (
	// Entry extensions, as the content octets of their DER OIDs, so that
	// reading a million entries does not allocate a million OIDs.
	derReasonCode     = []byte{0x55, 0x1d, 0x15} // 2.5.29.21
	derInvalidityDate = []byte{0x55, 0x1d, 0x18} // 2.5.29.24

	oidCRLNumber         = asn1.ObjectIdentifier{2, 5, 29, 20}
	oidAuthorityKeyID    = asn1.ObjectIdentifier{2, 5, 29, 35}
	errMalformed         = errors.New("revocation: malformed CRL")
	errNoIssuerInBundle  = errors.New("revocation: CRL not signed by any CA of the bundle")
	errUnsupportedFormat = errors.New("revocation: CRL is neither PEM nor DER")
)

// ParseCRL parses a PEM or DER CRL and verifies it against issuers: a CA
// whose subject is the CRL's issuer, which may sign CRLs, and whose key
// made the signature. It refuses CRLs it cannot apply in full: indirect
// CRLs, and CRLs or entries with critical extensions it does not know
// (delta CRLs, issuing distribution points).
func ParseCRL(data []byte, issuers []*x509.Certificate) (*CRL, error) {
	der, err := crlDER(data)
	if err != nil {
		return nil, err
	}
	parts, err := splitCRL(der)
	if err != nil {
		return nil, err
	}
	header, err := x509.ParseRevocationList(parts.skeleton)
	if err != nil {
		return nil, fmt.Errorf("revocation: CRL header: %w", err)
	}
	for _, ext := range header.Extensions {
		if ext.Critical && !ext.Id.Equal(oidCRLNumber) && !ext.Id.Equal(oidAuthorityKeyID) {
			return nil, fmt.Errorf("revocation: CRL has unsupported critical extension %v", ext.Id)
		}
	}
	issuer, err := verifyCRL(header, parts, issuers)
	if err != nil {
		return nil, err
	}
	crl := &CRL{Issuer: issuer, Number: header.Number, ThisUpdate: header.ThisUpdate,
		NextUpdate: header.NextUpdate}
	if crl.revoked, err = parseEntries(parts.revoked); err != nil {
		return nil, err
	}
	return crl, nil
}

func crlDER(data []byte) ([]byte, error) {
	if bytes.HasPrefix(bytes.TrimSpace(data), []byte("-----BEGIN")) {
		block, _ := pem.Decode(data)
		if block == nil || block.Type != "X509 CRL" {
			return nil, errors.New("revocation: PEM data holds no X509 CRL block")
		}
		return block.Bytes, nil
	}
	if len(data) == 0 || data[0] != 0x30 {
		return nil, errUnsupportedFormat
	}
	return data, nil
}

// crlParts are the pieces of a CRL: the signed bytes, the signature, the
// list of revoked certificates, and a copy of the CRL without that list,
// small enough for crypto/x509 to parse the header fields.
type crlParts struct {
	tbs       []byte
	signature []byte
	revoked   cryptobyte.String
	skeleton  []byte
}

func splitCRL(der []byte) (*crlParts, error) {
	input := cryptobyte.String(der)
	var list, tbsRaw, sigAlg cryptobyte.String
	var sig asn1.BitString
	if !input.ReadASN1(&list, casn1.SEQUENCE) || !input.Empty() ||
		!list.ReadASN1Element(&tbsRaw, casn1.SEQUENCE) ||
		!list.ReadASN1Element(&sigAlg, casn1.SEQUENCE) ||
		!list.ReadASN1BitString(&sig) || !list.Empty() {
		return nil, errMalformed
	}
	tbs := tbsRaw
	var body cryptobyte.String
	if !tbs.ReadASN1(&body, casn1.SEQUENCE) {
		return nil, errMalformed
	}
	head, revoked, tail, err := splitTBS(body)
	if err != nil {
		return nil, err
	}
	var b cryptobyte.Builder
	b.AddASN1(casn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1(casn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddBytes(head)
			b.AddBytes(tail)
		})
		b.AddBytes(sigAlg)
		b.AddASN1BitString(sig.Bytes)
	})
	skeleton, err := b.Bytes()
	if err != nil {
		return nil, errMalformed
	}
	return &crlParts{tbs: tbsRaw, signature: sig.RightAlign(), revoked: revoked,
		skeleton: skeleton}, nil
}

// splitTBS cuts the TBSCertList body around revokedCertificates.
func splitTBS(body cryptobyte.String) (head []byte, revoked cryptobyte.String,
	tail []byte, err error) {
	start := body
	var elem cryptobyte.String
	if body.PeekASN1Tag(casn1.INTEGER) && !body.ReadASN1Element(&elem, casn1.INTEGER) {
		return nil, nil, nil, errMalformed
	}
	// signature algorithm, issuer
	for i := 0; i < 2; i++ {
		if !body.ReadASN1Element(&elem, casn1.SEQUENCE) {
			return nil, nil, nil, errMalformed
		}
	}
	// thisUpdate and the optional nextUpdate
	for i := 0; i < 2; i++ {
		if !body.PeekASN1Tag(casn1.UTCTime) && !body.PeekASN1Tag(casn1.GeneralizedTime) {
			break
		}
		var tag casn1.Tag
		if !body.ReadAnyASN1Element(&elem, &tag) {
			return nil, nil, nil, errMalformed
		}
	}
	head = start[:len(start)-len(body)]
	if body.PeekASN1Tag(casn1.SEQUENCE) && !body.ReadASN1(&revoked, casn1.SEQUENCE) {
		return nil, nil, nil, errMalformed
	}
	return head, revoked, body, nil
}

func verifyCRL(header *x509.RevocationList, parts *crlParts,
	issuers []*x509.Certificate) (*x509.Certificate, error) {
	var lastErr error = errNoIssuerInBundle
	for _, ca := range issuers {
		if !bytes.Equal(ca.RawSubject, header.RawIssuer) {
			continue
		}
		if len(header.AuthorityKeyId) > 0 && len(ca.SubjectKeyId) > 0 &&
			!bytes.Equal(header.AuthorityKeyId, ca.SubjectKeyId) {
			continue
		}
		if !ca.IsCA || ca.KeyUsage != 0 && ca.KeyUsage&x509.KeyUsageCRLSign == 0 {
			lastErr = fmt.Errorf("revocation: CA %q may not sign CRLs", ca.Subject)
			continue
		}
		err := ca.CheckSignature(header.SignatureAlgorithm, parts.tbs, parts.signature)
		if err == nil {
			return ca, nil
		}
		lastErr = fmt.Errorf("revocation: CRL signature does not verify against %q: %w",
			ca.Subject, err)
	}
	return nil, lastErr
}

// maxSerialLen bounds a serial number's DER content; RFC 5280 allows 20
// octets, and longer ones are seen in the wild, but not this long.
const maxSerialLen = 128

// parseEntries reads revokedCertificates in two passes: one to count,
// one to fill a set of exactly that size.
func parseEntries(list cryptobyte.String) (revokedSet, error) {
	n := 0
	for rest := list; !rest.Empty(); n++ {
		if !rest.SkipASN1(casn1.SEQUENCE) {
			return revokedSet{}, errMalformed
		}
	}
	set := newRevokedSet(n)
	for !list.Empty() {
		var entry, serial cryptobyte.String
		if !list.ReadASN1(&entry, casn1.SEQUENCE) || !entry.ReadASN1(&serial, casn1.INTEGER) ||
			len(serial) == 0 || len(serial) > maxSerialLen {
			return revokedSet{}, errMalformed
		}
		at, err := readTime(&entry)
		if err != nil {
			return revokedSet{}, err
		}
		reason, err := entryReason(entry)
		if err != nil {
			return revokedSet{}, err
		}
		set.add(derSerialKey(serial), reason, at.Unix())
	}
	return set, nil
}

// readTime reads a UTCTime or GeneralizedTime. The DER forms CRLs use
// ("YYMMDDHHMMSSZ", "YYYYMMDDHHMMSSZ") are parsed without allocating; any
// other form goes through cryptobyte.
func readTime(s *cryptobyte.String) (time.Time, error) {
	var t time.Time
	peek := *s
	var content cryptobyte.String
	var tag casn1.Tag
	if peek.ReadAnyASN1(&content, &tag) {
		if t, ok := fastTime(content, tag); ok {
			*s = peek
			return t, nil
		}
	}
	switch {
	case s.PeekASN1Tag(casn1.UTCTime):
		if !s.ReadASN1UTCTime(&t) {
			return t, errMalformed
		}
	case s.PeekASN1Tag(casn1.GeneralizedTime):
		if !s.ReadASN1GeneralizedTime(&t) {
			return t, errMalformed
		}
	default:
		return t, errMalformed
	}
	return t, nil
}

func fastTime(b []byte, tag casn1.Tag) (time.Time, bool) {
	var year int
	switch {
	case tag == casn1.UTCTime && len(b) == 13:
		year = digits(b[0:2])
		if year < 0 {
			return time.Time{}, false
		}
		year += 1900
		if year < 1950 {
			year += 100
		}
		b = b[2:]
	case tag == casn1.GeneralizedTime && len(b) == 15:
		year = digits(b[0:4])
		b = b[4:]
	default:
		return time.Time{}, false
	}
	if b[10] != 'Z' {
		return time.Time{}, false
	}
	f := [5]int{}
	for i := range f {
		f[i] = digits(b[2*i : 2*i+2])
		if f[i] < 0 {
			return time.Time{}, false
		}
	}
	if year < 0 || f[0] < 1 || f[0] > 12 || f[1] < 1 || f[1] > 31 || f[2] > 23 || f[3] > 59 ||
		f[4] > 59 {
		return time.Time{}, false
	}
	t := time.Date(year, time.Month(f[0]), f[1], f[2], f[3], f[4], 0, time.UTC)
	if t.Day() != f[1] {
		return time.Time{}, false // February 31st and the like: let time.Parse refuse it
	}
	return t, true
}

// digits parses ASCII decimal digits; -1 if any is not a digit.
func digits(b []byte) int {
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return -1
		}
		n = 10*n + int(c-'0')
	}
	return n
}

// entryReason reads an entry's extensions: its reason code, if any. An
// entry naming another certificate issuer (an indirect CRL) or carrying an
// unknown critical extension makes the CRL unusable.
func entryReason(entry cryptobyte.String) (int16, error) {
	reason := int16(-1)
	if entry.Empty() {
		return reason, nil
	}
	var exts cryptobyte.String
	if !entry.ReadASN1(&exts, casn1.SEQUENCE) || !entry.Empty() {
		return 0, errMalformed
	}
	for !exts.Empty() {
		var ext, id, value cryptobyte.String
		critical := false
		if !exts.ReadASN1(&ext, casn1.SEQUENCE) || !ext.ReadASN1(&id, casn1.OBJECT_IDENTIFIER) ||
			!ext.ReadOptionalASN1Boolean(&critical, casn1.BOOLEAN, false) ||
			!ext.ReadASN1(&value, casn1.OCTET_STRING) {
			return 0, errMalformed
		}
		switch {
		case bytes.Equal(id, derReasonCode):
			var code int
			if !value.ReadASN1Enum(&code) || code < 0 || code > 10 {
				return 0, errMalformed
			}
			reason = int16(code)
		case bytes.Equal(id, derInvalidityDate):
		case critical:
			return 0, fmt.Errorf("revocation: CRL entry has unsupported critical extension %x",
				[]byte(id))
		}
	}
	return reason, nil
}

var reasonNames = [...]string{
	"unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
	"cessationOfOperation", "certificateHold", "", "removeFromCRL", "privilegeWithdrawn",
	"aACompromise",
}

func reasonName(code int16) string {
	if code < 0 || int(code) >= len(reasonNames) {
		return ""
	}
	return reasonNames[code]
}
