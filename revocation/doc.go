// Package revocation decides whether a verified client certificate chain
// has been revoked. It reads CRLs from files (re-read when they change),
// from URLs and from certificates' distribution points (refreshed before
// their nextUpdate), and asks OCSP responders about client certificates.
// A CRL counts only if it verifies against a CA of the bundle; revocations
// are looked up by issuer and serial together, in constant time; a CRL
// past its nextUpdate is stale, which refuses that issuer's certificates
// rather than admitting them; and a failed lookup is never taken as good.
package revocation
