// Package revocation decides whether a verified client certificate chain
// has been revoked, from CRLs the operator provides. A CRL counts only if
// it verifies against a CA of the bundle; revocations are looked up by
// issuer and serial together, in constant time, and a CRL past its
// nextUpdate is stale, which refuses that issuer's certificates rather
// than admitting them.
package revocation
