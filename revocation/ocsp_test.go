package revocation

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"maps"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/ocsp"
)

// ocspTestTimeout is the OCSP timeout of the tests that do not wait for
// the responder on purpose.
const ocspTestTimeout = 2 * time.Second

// ocspTestRevokedAt is the revocation time the test responders give.
var ocspTestRevokedAt = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// ocspTestClock is a pinned clock that tests move by hand.
type ocspTestClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *ocspTestClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *ocspTestClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// ocspReply answers one OCSP request; req is nil when the request did not
// parse.
type ocspReply func(w http.ResponseWriter, r *http.Request, req *ocsp.Request)

// ocspTestServer is an OCSP responder whose answers the test sets.
type ocspTestServer struct {
	*httptest.Server
	requests atomic.Int32
	mu       sync.Mutex
	reply    ocspReply
}

func newOCSPTestServer(t *testing.T) *ocspTestServer {
	s := &ocspTestServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	t.Cleanup(s.Close)
	return s
}

func (s *ocspTestServer) serve(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	body, _ := io.ReadAll(r.Body)
	var req *ocsp.Request
	if r.Method == http.MethodPost &&
		r.Header.Get("Content-Type") == "application/ocsp-request" {
		req, _ = ocsp.ParseRequest(body)
	}
	s.mu.Lock()
	reply := s.reply
	s.mu.Unlock()
	if reply == nil {
		http.Error(w, "no reply set", http.StatusInternalServerError)
		return
	}
	reply(w, r, req)
}

func (s *ocspTestServer) set(reply ocspReply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reply = reply
}

// ocspReplyDER answers with der.
func ocspReplyDER(der []byte) ocspReply {
	return func(w http.ResponseWriter, _ *http.Request, _ *ocsp.Request) {
		w.Header().Set("Content-Type", "application/ocsp-response")
		_, _ = w.Write(der)
	}
}

// ocspReplyCode answers with an HTTP error.
func ocspReplyCode(code int) ocspReply {
	return func(w http.ResponseWriter, _ *http.Request, _ *ocsp.Request) {
		http.Error(w, http.StatusText(code), code)
	}
}

// ocspTestEnv is a CA, a leaf it issued, another CA, a pinned clock near
// the real time (the testpki certificates are valid around it) and a
// responder.
type ocspTestEnv struct {
	ca, other *testpki.CA
	leaf      *testpki.Leaf
	clock     *ocspTestClock
	srv       *ocspTestServer
}

func newOCSPTestEnv(t *testing.T) *ocspTestEnv {
	t.Helper()
	ca, err := testpki.NewCA("OCSP test CA")
	require.NoError(t, err)
	other, err := testpki.NewCA("OCSP other CA")
	require.NoError(t, err)
	leaf, err := ca.Issue(testpki.LeafOptions{CommonName: "ocsp-client",
		Serial: big.NewInt(0x1234)})
	require.NoError(t, err)
	return &ocspTestEnv{ca: ca, other: other, leaf: leaf,
		clock: &ocspTestClock{now: time.Now().UTC().Truncate(time.Second)},
		srv:   newOCSPTestServer(t)}
}

func (e *ocspTestEnv) client(timeout time.Duration) *ocspClient {
	return newOCSPClient(e.srv.URL, timeout, e.clock.Now)
}

func (e *ocspTestEnv) chain() []*x509.Certificate {
	return []*x509.Certificate{e.leaf.Cert, e.ca.Cert}
}

// responder issues a delegated responder certificate.
func (e *ocspTestEnv) responder(t *testing.T, by *testpki.CA, eku x509.ExtKeyUsage,
	notBefore, notAfter time.Time) *testpki.Leaf {
	t.Helper()
	l, err := by.Issue(testpki.LeafOptions{CommonName: "ocsp responder",
		ExtKeyUsage: []x509.ExtKeyUsage{eku}, NotBefore: notBefore, NotAfter: notAfter})
	require.NoError(t, err)
	return l
}

// sign builds a response from tmpl about e.leaf (unless tmpl names a
// serial), naming e.ca as the issuer, signed by the CA or by signer.
func (e *ocspTestEnv) sign(t testing.TB, tmpl ocsp.Response, signer *testpki.Leaf) []byte {
	t.Helper()
	cert, key := e.ca.Cert, e.ca.Key
	if signer != nil {
		cert, key = signer.Cert, signer.Key
		tmpl.Certificate = signer.Cert
	}
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = e.leaf.Cert.SerialNumber
	}
	der, err := ocsp.CreateResponse(e.ca.Cert, cert, tmpl, key)
	require.NoError(t, err)
	return der
}

// good is a good answer issued a minute ago and due again after next.
func (e *ocspTestEnv) good(next time.Duration) ocsp.Response {
	now := e.clock.Now()
	return ocsp.Response{Status: ocsp.Good, ThisUpdate: now.Add(-time.Minute),
		NextUpdate: now.Add(next)}
}

// revoked is good made a keyCompromise revocation.
func (e *ocspTestEnv) revoked(next time.Duration) ocsp.Response {
	r := e.good(next)
	r.Status, r.RevocationReason, r.RevokedAt = ocsp.Revoked, ocsp.KeyCompromise,
		ocspTestRevokedAt
	return r
}

// replyNow answers each request with tmpl(now) about the serial asked,
// signed by the CA, so that the answers follow the pinned clock.
func (e *ocspTestEnv) replyNow(t testing.TB, tmpl func() ocsp.Response) ocspReply {
	return func(w http.ResponseWriter, _ *http.Request, req *ocsp.Request) {
		r := tmpl()
		if req != nil {
			r.SerialNumber = req.SerialNumber
		}
		der, err := ocsp.CreateResponse(e.ca.Cert, e.ca.Cert, r, e.ca.Key)
		if err != nil {
			t.Errorf("CreateResponse: %v", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		ocspReplyDER(der)(w, nil, nil)
	}
}

func TestOCSPVerify(t *testing.T) {
	e := newOCSPTestEnv(t)
	now := e.clock.Now()
	hour := time.Hour
	withThis := func(r ocsp.Response, this time.Time) ocsp.Response {
		r.ThisUpdate = this
		return r
	}
	withNext := func(r ocsp.Response, next time.Time) ocsp.Response {
		r.NextUpdate = next
		return r
	}
	signedBy := func(tmpl ocsp.Response, ca *testpki.CA, embed bool) []byte {
		tmpl.SerialNumber = e.leaf.Cert.SerialNumber
		if embed {
			tmpl.Certificate = ca.Cert
		}
		// The CertID names e.ca; only the signature is another CA's.
		der, err := ocsp.CreateResponse(e.ca.Cert, ca.Cert, tmpl, ca.Key)
		require.NoError(t, err)
		return der
	}
	delegated := e.responder(t, e.ca, x509.ExtKeyUsageOCSPSigning, time.Time{}, time.Time{})
	noEKU := e.responder(t, e.ca, x509.ExtKeyUsageClientAuth, time.Time{}, time.Time{})
	expired := e.responder(t, e.ca, x509.ExtKeyUsageOCSPSigning, now.Add(-2*hour),
		now.Add(-time.Second))
	early := e.responder(t, e.ca, x509.ExtKeyUsageOCSPSigning, now.Add(time.Second),
		now.Add(2*hour))
	foreign := e.responder(t, e.other, x509.ExtKeyUsageOCSPSigning, time.Time{}, time.Time{})
	otherSerial := e.good(hour)
	otherSerial.SerialNumber = big.NewInt(0x4321)

	tests := []struct {
		name      string
		der       []byte
		want      Status
		wantEntry Entry
		wantUntil time.Time
		wantErr   string
	}{
		{name: "good", der: e.sign(t, e.good(30*time.Minute), nil), want: Good,
			wantUntil: now.Add(30 * time.Minute)},
		{name: "revoked carries reason and time", der: e.sign(t, e.revoked(hour), nil),
			want: Revoked, wantUntil: now.Add(hour),
			wantEntry: Entry{Reason: "keyCompromise", RevokedAt: ocspTestRevokedAt}},
		{name: "unknown status",
			der:     e.sign(t, ocsp.Response{Status: ocsp.Unknown, ThisUpdate: now}, nil),
			wantErr: "does not know the certificate"},
		{name: "signed by another CA", der: signedBy(e.good(hour), e.other, false),
			wantErr: "not signed by the issuer"},
		{name: "signed by another CA that embeds its certificate",
			der:     signedBy(e.good(hour), e.other, true),
			wantErr: "not issued by the issuer"},
		{name: "signed by the issuer that embeds its own certificate",
			der: signedBy(e.good(hour), e.ca, true), want: Good, wantUntil: now.Add(hour)},
		{name: "delegated responder with OCSPSigning",
			der: e.sign(t, e.good(hour), delegated), want: Good, wantUntil: now.Add(hour)},
		{name: "delegated responder without OCSPSigning",
			der: e.sign(t, e.good(hour), noEKU), wantErr: "lacks the OCSPSigning usage"},
		{name: "delegated responder expired", der: e.sign(t, e.good(hour), expired),
			wantErr: "not valid now"},
		{name: "delegated responder not yet valid", der: e.sign(t, e.good(hour), early),
			wantErr: "not valid now"},
		{name: "delegated responder issued by another CA",
			der: e.sign(t, e.good(hour), foreign), wantErr: "not issued by the issuer"},
		{name: "answer about another serial", der: e.sign(t, otherSerial, nil),
			wantErr: "no response matching"},
		{name: "thisUpdate beyond the skew ahead",
			der:     e.sign(t, withThis(e.good(hour), now.Add(ocspSkew+time.Second)), nil),
			wantErr: "from the future"},
		{name: "thisUpdate within the skew ahead",
			der:  e.sign(t, withThis(e.good(hour), now.Add(ocspSkew-time.Second)), nil),
			want: Good, wantUntil: now.Add(hour)},
		{name: "thisUpdate exactly the skew ahead",
			der:  e.sign(t, withThis(e.good(hour), now.Add(ocspSkew)), nil),
			want: Good, wantUntil: now.Add(hour)},
		{name: "nextUpdate beyond the skew past",
			der: e.sign(t, withThis(withNext(e.good(hour), now.Add(-ocspSkew-time.Second)),
				now.Add(-2*hour)), nil),
			wantErr: "past its nextUpdate"},
		{name: "nextUpdate within the skew past",
			der: e.sign(t, withThis(withNext(e.good(hour), now.Add(-ocspSkew+time.Second)),
				now.Add(-2*hour)), nil),
			want: Good, wantUntil: now.Add(-ocspSkew + time.Second)},
		{name: "no nextUpdate is kept until the ceiling after thisUpdate",
			der:  e.sign(t, withNext(e.good(hour), time.Time{}), nil),
			want: Good, wantUntil: now.Add(ocspCeiling - time.Minute)},
		{name: "no nextUpdate and older than the ceiling: a replay",
			der: e.sign(t, withThis(withNext(e.good(hour), time.Time{}),
				now.Add(-ocspCeiling-ocspSkew)), nil),
			wantErr: "too old"},
		{name: "nextUpdate beyond the ceiling is kept until the ceiling",
			der: e.sign(t, e.good(5*hour), nil), want: Good, wantUntil: now.Add(ocspCeiling)},
		{name: "revoked without nextUpdate", der: e.sign(t, withNext(e.revoked(hour),
			time.Time{}), nil), want: Revoked, wantUntil: now.Add(ocspCeiling - time.Minute),
			wantEntry: Entry{Reason: "keyCompromise", RevokedAt: ocspTestRevokedAt}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.srv.set(ocspReplyDER(tt.der))
			o := e.client(ocspTestTimeout)
			before := e.srv.requests.Load()
			got, changed, err := o.lookup(context.Background(), e.leaf.Cert, e.ca.Cert)
			assert.Equal(t, before+1, e.srv.requests.Load(), "requests")
			assert.False(t, changed)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				assert.Equal(t, ocspAnswer{}, got)
				assert.Empty(t, o.cache, "a failure is not cached")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got.status)
			assert.Equal(t, tt.wantEntry.Reason, got.entry.Reason)
			assert.True(t, tt.wantEntry.RevokedAt.Equal(got.entry.RevokedAt),
				"revokedAt %s, want %s", got.entry.RevokedAt, tt.wantEntry.RevokedAt)
			assert.True(t, tt.wantUntil.Equal(got.until), "until %s, want %s",
				got.until, tt.wantUntil)
			assert.Equal(t, got, o.cache[keyOf(e.leaf.Cert, e.ca.Cert)], "cached as answered")
			// verify alone gives the same answer.
			again, err := o.verify(tt.der, e.leaf.Cert, e.ca.Cert)
			require.NoError(t, err)
			assert.Equal(t, got, again)
		})
	}
}

// TestOCSPRequest checks what the client sends: a POST of a request about
// the leaf, naming its issuer, to the override or else the AIA URL.
func TestOCSPRequest(t *testing.T) {
	e := newOCSPTestEnv(t)
	var got *ocsp.Request
	var method, ctype string
	e.srv.set(func(w http.ResponseWriter, r *http.Request, req *ocsp.Request) {
		got, method, ctype = req, r.Method, r.Header.Get("Content-Type")
		ocspReplyDER(e.sign(t, e.good(time.Hour), nil))(w, r, req)
	})
	_, _, err := e.client(ocspTestTimeout).lookup(context.Background(), e.leaf.Cert, e.ca.Cert)
	require.NoError(t, err)
	assert.Equal(t, http.MethodPost, method)
	assert.Equal(t, "application/ocsp-request", ctype)
	require.NotNil(t, got, "the request parses")
	assert.Equal(t, e.leaf.Cert.SerialNumber, got.SerialNumber)
	want, err := ocsp.CreateRequest(e.leaf.Cert, e.ca.Cert, nil)
	require.NoError(t, err)
	wantReq, err := ocsp.ParseRequest(want)
	require.NoError(t, err)
	assert.Equal(t, wantReq.IssuerKeyHash, got.IssuerKeyHash)
	assert.Equal(t, wantReq.IssuerNameHash, got.IssuerNameHash)

	aia := ocspLeafWithAIA(t, e.ca, "http://aia.invalid/ocsp")
	tests := []struct {
		name     string
		override string
		cert     *x509.Certificate
		want     string
	}{
		{"override", "http://override.invalid/", e.leaf.Cert, "http://override.invalid/"},
		{"override wins over AIA", "http://override.invalid/", aia,
			"http://override.invalid/"},
		{"AIA", "", aia, "http://aia.invalid/ocsp"},
		{"neither", "", e.leaf.Cert, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newOCSPClient(tt.override, time.Second, e.clock.Now)
			assert.Equal(t, tt.want, o.url(tt.cert))
		})
	}
}

func TestOCSPFetchFailures(t *testing.T) {
	e := newOCSPTestEnv(t)
	const timeout = 200 * time.Millisecond
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) }) // runs before the server closes
	good := e.sign(t, e.good(time.Hour), nil)
	over := append(append([]byte(nil), good...), make([]byte, maxOCSPResponse)...)
	slow := func(w http.ResponseWriter, r *http.Request, _ *ocsp.Request) {
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}

	tests := []struct {
		name    string
		reply   ocspReply
		wantErr string
		slow    bool
	}{
		{name: "HTTP 404", reply: ocspReplyCode(http.StatusNotFound), wantErr: "404 Not Found"},
		{name: "HTTP 500", reply: ocspReplyCode(http.StatusInternalServerError),
			wantErr: "500 Internal Server Error"},
		{name: "tryLater", reply: ocspReplyDER(ocsp.TryLaterErrorResponse),
			wantErr: "try later"},
		{name: "body over the limit", reply: ocspReplyDER(over),
			wantErr: "answer over 65536 bytes"},
		{name: "garbage body", reply: ocspReplyDER([]byte("this is not an OCSP response")),
			wantErr: "OCSP answer"},
		{name: "empty body", reply: ocspReplyDER(nil), wantErr: "OCSP answer"},
		{name: "trailing data", reply: ocspReplyDER(append(append([]byte(nil), good...), 0)),
			wantErr: "trailing data"},
		{name: "slow responder", reply: slow, wantErr: "OCSP responder", slow: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.srv.set(tt.reply)
			o := e.client(timeout)
			start := time.Now()
			got, changed, err := o.lookup(context.Background(), e.leaf.Cert, e.ca.Cert)
			elapsed := time.Since(start)
			require.ErrorContains(t, err, tt.wantErr)
			assert.Equal(t, ocspAnswer{}, got)
			assert.False(t, changed)
			assert.Less(t, elapsed, timeout+time.Second, "returns within about the timeout")
			if tt.slow {
				assert.GreaterOrEqual(t, elapsed, timeout)
				assert.True(t, errors.Is(err, context.DeadlineExceeded) || ocspIsTimeout(err),
					"a timeout: %v", err)
			}
			o.mu.Lock()
			defer o.mu.Unlock()
			assert.Empty(t, o.cache, "a failure is not cached")
			assert.Empty(t, o.inflight)
		})
	}

	t.Run("responder down", func(t *testing.T) {
		down := httptest.NewServer(http.NotFoundHandler())
		down.Close()
		o := newOCSPClient(down.URL, timeout, e.clock.Now)
		_, _, err := o.lookup(context.Background(), e.leaf.Cert, e.ca.Cert)
		require.ErrorContains(t, err, "OCSP responder "+down.URL)
	})
	t.Run("caller's context ends", func(t *testing.T) {
		e.srv.set(slow)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, _, err := e.client(ocspTestTimeout).lookup(ctx, e.leaf.Cert, e.ca.Cert)
		require.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Less(t, time.Since(start), ocspTestTimeout)
	})
}

func ocspIsTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

func TestOCSPCache(t *testing.T) {
	lookup := func(t *testing.T, e *ocspTestEnv, o *ocspClient) (ocspAnswer, bool, error) {
		t.Helper()
		return o.lookup(context.Background(), e.leaf.Cert, e.ca.Cert)
	}
	mustLookup := func(t *testing.T, e *ocspTestEnv, o *ocspClient, want Status,
		wantChanged bool) {
		t.Helper()
		got, changed, err := lookup(t, e, o)
		require.NoError(t, err)
		assert.Equal(t, want, got.status)
		assert.Equal(t, wantChanged, changed, "changed")
	}

	t.Run("second lookup is answered from the cache", func(t *testing.T) {
		e := newOCSPTestEnv(t)
		e.srv.set(e.replyNow(t, func() ocsp.Response { return e.good(10 * time.Minute) }))
		o := e.client(ocspTestTimeout)
		mustLookup(t, e, o, Good, false)
		mustLookup(t, e, o, Good, false)
		e.clock.Add(10*time.Minute - time.Second)
		mustLookup(t, e, o, Good, false)
		assert.EqualValues(t, 1, e.srv.requests.Load())
	})
	t.Run("asks again once the answer expires", func(t *testing.T) {
		e := newOCSPTestEnv(t)
		e.srv.set(e.replyNow(t, func() ocsp.Response { return e.good(10 * time.Minute) }))
		o := e.client(ocspTestTimeout)
		mustLookup(t, e, o, Good, false)
		e.clock.Add(10 * time.Minute) // now == until
		mustLookup(t, e, o, Good, false)
		assert.EqualValues(t, 2, e.srv.requests.Load())
		mustLookup(t, e, o, Good, false)
		assert.EqualValues(t, 2, e.srv.requests.Load(), "the new answer is cached")
	})
	t.Run("answer without nextUpdate expires at the ceiling", func(t *testing.T) {
		e := newOCSPTestEnv(t)
		e.srv.set(e.replyNow(t, func() ocsp.Response {
			r := e.good(0)
			r.NextUpdate = time.Time{}
			return r
		}))
		o := e.client(ocspTestTimeout)
		mustLookup(t, e, o, Good, false)
		e.clock.Add(ocspCeiling - time.Minute - time.Second) // thisUpdate was a minute ago
		mustLookup(t, e, o, Good, false)
		assert.EqualValues(t, 1, e.srv.requests.Load())
		e.clock.Add(time.Second)
		mustLookup(t, e, o, Good, false)
		assert.EqualValues(t, 2, e.srv.requests.Load())
	})
	t.Run("a failure is not cached as good", func(t *testing.T) {
		e := newOCSPTestEnv(t)
		e.srv.set(ocspReplyCode(http.StatusServiceUnavailable))
		o := e.client(ocspTestTimeout)
		_, _, err := lookup(t, e, o)
		require.Error(t, err)
		_, _, err = lookup(t, e, o)
		require.Error(t, err, "still a failure while remembered")
		assert.EqualValues(t, 1, e.srv.requests.Load(), "a failure is remembered briefly")
		e.clock.Add(ocspFailureTTL)
		_, _, err = lookup(t, e, o)
		require.Error(t, err)
		assert.EqualValues(t, 2, e.srv.requests.Load(), "asks again once that has passed")
		e.clock.Add(ocspFailureTTL)
		e.srv.set(e.replyNow(t, func() ocsp.Response { return e.good(10 * time.Minute) }))
		mustLookup(t, e, o, Good, false)
		mustLookup(t, e, o, Good, false)
		assert.EqualValues(t, 3, e.srv.requests.Load(), "a good answer after a failure is cached")
	})
	t.Run("good turned revoked is a change", func(t *testing.T) {
		e := newOCSPTestEnv(t)
		e.srv.set(e.replyNow(t, func() ocsp.Response { return e.good(10 * time.Minute) }))
		o := e.client(ocspTestTimeout)
		mustLookup(t, e, o, Good, false)
		e.srv.set(e.replyNow(t, func() ocsp.Response { return e.revoked(10 * time.Minute) }))
		mustLookup(t, e, o, Good, false) // still cached
		e.clock.Add(10 * time.Minute)
		got, changed, err := lookup(t, e, o)
		require.NoError(t, err)
		assert.True(t, changed)
		assert.Equal(t, Revoked, got.status)
		assert.Equal(t, "keyCompromise", got.entry.Reason)
		mustLookup(t, e, o, Revoked, false) // cached, unchanged
		e.clock.Add(10 * time.Minute)
		mustLookup(t, e, o, Revoked, false) // asked again, same answer
		assert.EqualValues(t, 3, e.srv.requests.Load())
	})
	t.Run("a failure between two answers keeps the change visible", func(t *testing.T) {
		e := newOCSPTestEnv(t)
		e.srv.set(e.replyNow(t, func() ocsp.Response { return e.good(10 * time.Minute) }))
		o := e.client(ocspTestTimeout)
		mustLookup(t, e, o, Good, false)
		e.clock.Add(10 * time.Minute)
		e.srv.set(ocspReplyCode(http.StatusInternalServerError))
		_, _, err := lookup(t, e, o)
		require.Error(t, err)
		e.clock.Add(ocspFailureTTL)
		e.srv.set(e.replyNow(t, func() ocsp.Response { return e.revoked(10 * time.Minute) }))
		mustLookup(t, e, o, Revoked, true)
	})
	t.Run("same serial under another issuer is asked about apart", func(t *testing.T) {
		e := newOCSPTestEnv(t)
		twin, err := e.other.Issue(testpki.LeafOptions{CommonName: "twin",
			Serial: e.leaf.Cert.SerialNumber})
		require.NoError(t, err)
		e.srv.set(e.replyNow(t, func() ocsp.Response { return e.good(10 * time.Minute) }))
		o := e.client(ocspTestTimeout)
		mustLookup(t, e, o, Good, false)
		der, err := ocsp.CreateResponse(e.other.Cert, e.other.Cert,
			ocsp.Response{Status: ocsp.Revoked, SerialNumber: twin.Cert.SerialNumber,
				ThisUpdate: e.clock.Now(), RevokedAt: ocspTestRevokedAt}, e.other.Key)
		require.NoError(t, err)
		e.srv.set(ocspReplyDER(der))
		got, changed, err := o.lookup(context.Background(), twin.Cert, e.other.Cert)
		require.NoError(t, err)
		assert.Equal(t, Revoked, got.status)
		assert.False(t, changed)
		mustLookup(t, e, o, Good, false)
		assert.EqualValues(t, 2, e.srv.requests.Load())
	})
	t.Run("concurrent lookups share one request", func(t *testing.T) {
		e := newOCSPTestEnv(t)
		const n = 50
		var started sync.WaitGroup
		started.Add(n)
		allStarted := make(chan struct{})
		go func() { started.Wait(); close(allStarted) }()
		good := e.replyNow(t, func() ocsp.Response { return e.good(10 * time.Minute) })
		e.srv.set(func(w http.ResponseWriter, r *http.Request, req *ocsp.Request) {
			// Hold the answer until every lookup has started, and a little
			// longer so that they join this request rather than race it.
			select {
			case <-allStarted:
				time.Sleep(20 * time.Millisecond)
			case <-time.After(time.Second):
			}
			good(w, r, req)
		})
		o := e.client(ocspTestTimeout)
		var wg sync.WaitGroup
		errs := make([]error, n)
		got := make([]ocspAnswer, n)
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				started.Done()
				got[i], _, errs[i] = o.lookup(context.Background(), e.leaf.Cert, e.ca.Cert)
			}()
		}
		wg.Wait()
		for i := range n {
			require.NoError(t, errs[i], "lookup %d", i)
			assert.Equal(t, Good, got[i].status, "lookup %d", i)
		}
		assert.EqualValues(t, 1, e.srv.requests.Load())
		assert.Empty(t, o.inflight)
		assert.Len(t, o.cache, 1)
	})
	t.Run("concurrent lookups share one failure", func(t *testing.T) {
		e := newOCSPTestEnv(t)
		const n = 20
		arrived := make(chan struct{})
		release := make(chan struct{})
		e.srv.set(func(w http.ResponseWriter, r *http.Request, req *ocsp.Request) {
			close(arrived) // a second request would panic here
			<-release
			ocspReplyCode(http.StatusInternalServerError)(w, r, req)
		})
		o := e.client(ocspTestTimeout)
		errs := make(chan error, n)
		go func() {
			_, _, err := o.lookup(context.Background(), e.leaf.Cert, e.ca.Cert)
			errs <- err
		}()
		<-arrived // the first lookup is in flight: the others join it
		for range n - 1 {
			go func() {
				_, _, err := o.lookup(context.Background(), e.leaf.Cert, e.ca.Cert)
				errs <- err
			}()
		}
		// Give the others a moment to join. The assertions hold however
		// they are scheduled: none can return before release, and a late
		// one that asks again would show as a second request.
		time.Sleep(20 * time.Millisecond)
		close(release)
		for range n {
			assert.ErrorContains(t, <-errs, "500")
		}
		assert.EqualValues(t, 1, e.srv.requests.Load())
		assert.Empty(t, o.cache)
	})
}

// ocspFullCache is a cache of maxOCSPCache answers valid for an hour
// after now, built once: tests clone it.
var ocspFullCache = sync.OnceValues(func() (map[ocspKey]ocspAnswer, []ocspKey) {
	now := ocspEvictNow
	m := make(map[ocspKey]ocspAnswer, maxOCSPCache)
	keys := make([]ocspKey, maxOCSPCache)
	for i := range keys {
		keys[i] = ocspKey{serial: strconv.Itoa(i)}
		m[keys[i]] = ocspAnswer{until: now.Add(time.Hour)}
	}
	return m, keys
})

var ocspEvictNow = time.Date(2031, 5, 6, 7, 8, 9, 0, time.UTC)

// ocspFill fills o.cache to maxOCSPCache, the first expired of them
// already expired at ocspEvictNow (until == now counts as expired).
func ocspFill(o *ocspClient, expired int) {
	full, keys := ocspFullCache()
	o.cache = maps.Clone(full)
	for i, k := range keys[:expired] {
		o.cache[k] = ocspAnswer{until: ocspEvictNow.Add(-time.Duration(i%2) * time.Second)}
	}
}

func TestOCSPCacheEviction(t *testing.T) {
	now := ocspEvictNow
	tests := []struct {
		name    string
		expired int
		wantLen int
	}{
		{"expired answers go first", 20_000, maxOCSPCache - 20_000},
		{"then others down to nine tenths", 5_000, maxOCSPCache*9/10 - 1},
		{"none expired", 0, maxOCSPCache*9/10 - 1},
		{"all expired", maxOCSPCache, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := newOCSPClient("", time.Second, func() time.Time { return now })
			ocspFill(o, tt.expired)
			o.evictLocked()
			assert.Len(t, o.cache, tt.wantLen)
			for k, a := range o.cache {
				if !now.Before(a.until) {
					t.Fatalf("expired answer %q kept", k.serial)
				}
			}
		})
	}

	t.Run("a full cache makes room for a new answer", func(t *testing.T) {
		e := newOCSPTestEnv(t)
		e.srv.set(e.replyNow(t, func() ocsp.Response { return e.good(10 * time.Minute) }))
		o := e.client(ocspTestTimeout)
		e.clock.now = ocspEvictNow.Add(-time.Minute) // the filled answers are current
		ocspFill(o, 0)
		_, _, err := o.lookup(context.Background(), e.leaf.Cert, e.ca.Cert)
		require.NoError(t, err)
		assert.Len(t, o.cache, maxOCSPCache*9/10)
		assert.Contains(t, o.cache, keyOf(e.leaf.Cert, e.ca.Cert))
	})
}

// ocspLeafWithAIA issues a client certificate whose AIA names url as its
// OCSP responder (testpki.LeafOptions cannot).
func ocspLeafWithAIA(t *testing.T, ca *testpki.CA, url string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(0xa1a),
		Subject:      pkix.Name{CommonName: "aia-client"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		OCSPServer:   []string{url},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	require.Equal(t, []string{url}, cert.OCSPServer)
	return cert
}

func TestOCSPChecker(t *testing.T) {
	e := newOCSPTestEnv(t)
	down := httptest.NewServer(http.NotFoundHandler())
	down.Close()
	aia := ocspLeafWithAIA(t, e.ca, e.srv.URL)
	deadAIA := ocspLeafWithAIA(t, e.ca, down.URL)
	good := e.replyNow(t, func() ocsp.Response { return e.good(10 * time.Minute) })
	revoked := e.replyNow(t, func() ocsp.Response { return e.revoked(10 * time.Minute) })
	unknown := e.replyNow(t, func() ocsp.Response {
		return ocsp.Response{Status: ocsp.Unknown, ThisUpdate: e.clock.Now()}
	})

	tests := []struct {
		name         string
		mode         OCSPMode
		url          string // "srv" for the test responder
		reply        ocspReply
		chain        []*x509.Certificate
		want         Status
		wantSoft     bool
		wantDetail   string
		wantRequests int32
	}{
		{name: "soft-fail, good", mode: OCSPSoftFail, url: "srv", reply: good,
			want: Good, wantRequests: 1},
		{name: "hard-fail, good", mode: OCSPHardFail, url: "srv", reply: good,
			want: Good, wantRequests: 1},
		{name: "soft-fail, responder down", mode: OCSPSoftFail, url: down.URL,
			want: Good, wantSoft: true, wantDetail: `no OCSP answer for "ocsp-client"`},
		{name: "hard-fail, responder down", mode: OCSPHardFail, url: down.URL,
			want: Unknown, wantDetail: `no OCSP answer for "ocsp-client"`},
		{name: "soft-fail, HTTP 500", mode: OCSPSoftFail, url: "srv",
			reply: ocspReplyCode(http.StatusInternalServerError), want: Good, wantSoft: true,
			wantDetail: "500 Internal Server Error", wantRequests: 1},
		{name: "hard-fail, HTTP 500", mode: OCSPHardFail, url: "srv",
			reply: ocspReplyCode(http.StatusInternalServerError), want: Unknown,
			wantDetail: "500 Internal Server Error", wantRequests: 1},
		{name: "hard-fail, unknown certificate", mode: OCSPHardFail, url: "srv",
			reply: unknown, want: Unknown, wantDetail: "does not know", wantRequests: 1},
		{name: "soft-fail, revoked", mode: OCSPSoftFail, url: "srv", reply: revoked,
			want: Revoked, wantRequests: 1,
			wantDetail: `OCSP: certificate "ocsp-client" (serial 1234) revoked at ` +
				ocspTestRevokedAt.Format(time.RFC3339) + ", reason keyCompromise"},
		{name: "hard-fail, revoked", mode: OCSPHardFail, url: "srv", reply: revoked,
			want: Revoked, wantDetail: "reason keyCompromise", wantRequests: 1},
		{name: "no responder URL at all", mode: OCSPHardFail, reply: revoked,
			want: Good},
		{name: "OCSP off", mode: OCSPOff, url: "srv", reply: revoked, want: Good},
		{name: "leaf alone", mode: OCSPHardFail, url: "srv", reply: revoked,
			chain: []*x509.Certificate{e.leaf.Cert}, want: Good},
		{name: "AIA URL without override", mode: OCSPHardFail, reply: revoked,
			chain: []*x509.Certificate{aia, e.ca.Cert}, want: Revoked,
			wantDetail: `"aia-client" (serial a1a)`, wantRequests: 1},
		{name: "override over a dead AIA URL", mode: OCSPHardFail, url: "srv",
			reply: revoked, chain: []*x509.Certificate{deadAIA, e.ca.Cert}, want: Revoked,
			wantRequests: 1},
		{name: "hard-fail, dead AIA URL", mode: OCSPHardFail, reply: revoked,
			chain: []*x509.Certificate{deadAIA, e.ca.Cert}, want: Unknown,
			wantDetail: `no OCSP answer for "aia-client"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url := tt.url
			if url == "srv" {
				url = e.srv.URL
			}
			e.srv.set(tt.reply)
			before := e.srv.requests.Load()
			c, err := New(Config{OCSP: tt.mode, OCSPResponderURL: url,
				OCSPTimeout: 200 * time.Millisecond, Clock: e.clock.Now})
			require.NoError(t, err)
			chain := tt.chain
			if chain == nil {
				chain = e.chain()
			}
			r := c.Check(context.Background(), chain)
			assert.Equal(t, tt.want, r.Status, "status; detail %q", r.Detail)
			assert.Equal(t, tt.wantSoft, r.SoftFailed, "SoftFailed")
			assert.Contains(t, r.Detail, tt.wantDetail)
			assert.Equal(t, tt.wantRequests, e.srv.requests.Load()-before, "requests")
			switch tt.want {
			case Good:
				assert.NoError(t, r.Err())
				assert.Equal(t, tt.wantSoft, r.Detail != "", "a Detail only on soft-fail")
			case Revoked:
				assert.ErrorIs(t, r.Err(), ErrRevoked)
				assert.Same(t, chain[0], r.Cert)
				assert.Equal(t, "keyCompromise", r.Entry.Reason)
				assert.True(t, ocspTestRevokedAt.Equal(r.Entry.RevokedAt))
			case Unknown:
				assert.ErrorIs(t, r.Err(), ErrUnknown)
				assert.Same(t, chain[0], r.Cert)
			}
		})
	}
}

func TestOCSPCheckerOnChange(t *testing.T) {
	e := newOCSPTestEnv(t)
	var changes atomic.Int32
	c, err := New(Config{OCSP: OCSPHardFail, OCSPResponderURL: e.srv.URL,
		OCSPTimeout: 200 * time.Millisecond, Clock: e.clock.Now,
		OnChange: func() { changes.Add(1) }})
	require.NoError(t, err)
	check := func(t *testing.T, want Status, wantChanges, wantRequests int32) {
		t.Helper()
		r := c.Check(context.Background(), e.chain())
		assert.Equal(t, want, r.Status, "detail %q", r.Detail)
		assert.Equal(t, wantChanges, changes.Load(), "OnChange calls")
		assert.Equal(t, wantRequests, e.srv.requests.Load(), "requests")
	}

	steps := []struct {
		name         string
		reply        ocspReply
		advance      time.Duration
		want         Status
		wantChanges  int32
		wantRequests int32
	}{
		{"first answer good: no change",
			e.replyNow(t, func() ocsp.Response { return e.good(10 * time.Minute) }),
			0, Good, 0, 1},
		{"revoked at the responder, good still cached",
			e.replyNow(t, func() ocsp.Response { return e.revoked(10 * time.Minute) }),
			time.Minute, Good, 0, 1},
		{"cached answer expired: revoked is a change", nil, 9 * time.Minute, Revoked, 1, 2},
		{"revoked from the cache: no change", nil, time.Minute, Revoked, 1, 2},
		{"revoked again: no change", nil, 10 * time.Minute, Revoked, 1, 3},
		{"responder down: no change",
			ocspReplyCode(http.StatusBadGateway), 10 * time.Minute, Unknown, 1, 4},
		{"good again: a change",
			e.replyNow(t, func() ocsp.Response { return e.good(10 * time.Minute) }),
			ocspFailureTTL, Good, 2, 5},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.reply != nil {
				e.srv.set(s.reply)
			}
			e.clock.Add(s.advance)
			check(t, s.want, s.wantChanges, s.wantRequests)
		})
	}
}
