// Package proxy terminates mutual TLS for nsqd's TCP protocol.
//
// NSQ clients do not open with TLS: they send the magic "  V2", then an
// IDENTIFY whose JSON body asks for tls_v1, and only after the server's
// feature-negotiation answer do both sides run the TLS handshake. The
// proxy speaks that opening itself, answering from nsqd settings it has
// learned over its own connection, so that no byte of a client reaches
// nsqd before the client's certificate has been verified. Only then does
// it dial nsqd, replay the client's IDENTIFY without tls_v1, check nsqd's
// answer against what it promised, and relay both directions verbatim.
package proxy
