package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// tlsBody is the smallest IDENTIFY body the proxy accepts.
const tlsBody = `{"feature_negotiation":true,"tls_v1":true}`

// maxOpeningErrorText bounds the text of an opening error frame: it must
// never echo an unbounded part of what the client sent.
const maxOpeningErrorText = 400

// withSize is "  V2" + line + "\n" + a 4-byte big-endian size + body.
func withSize(line string, size uint32, body []byte) []byte {
	out := []byte(magicV2 + line + "\n")
	out = binary.BigEndian.AppendUint32(out, size)
	return append(out, body...)
}

// identifyOpening is a complete opening with body.
func identifyOpening(body string) []byte {
	return withSize("IDENTIFY", uint32(len(body)), []byte(body))
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func readOpeningBytes(input []byte) (*identifyData, error) {
	return readOpening(bufio.NewReaderSize(bytes.NewReader(input), openingBufSize))
}

// readOpeningPipe writes input in a single Write on one end of a net.Pipe,
// closes that end, and reads the opening from the other, as conn.go does.
func readOpeningPipe(t *testing.T, input []byte) (*identifyData, error) {
	client, server := net.Pipe()
	defer server.Close()
	require.NoError(t, server.SetReadDeadline(time.Now().Add(5*time.Second)))
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		_, _ = client.Write(input) // fails once the server side is closed
		client.Close()
	}()
	id, err := readOpening(bufio.NewReaderSize(server, openingBufSize))
	server.Close()
	<-wrote
	return id, err
}

// goNSQOpening is the opening go-nsq v1.1.0 itself writes for cfg.
func goNSQOpening(t testing.TB, cfg *nsq.Config) []byte {
	// The same map go-nsq's Conn.identify builds, deprecated fields included.
	ci := map[string]any{
		"client_id":             cfg.ClientID,
		"hostname":              cfg.Hostname,
		"user_agent":            cfg.UserAgent,
		"short_id":              cfg.ClientID,
		"long_id":               cfg.Hostname,
		"tls_v1":                cfg.TlsV1,
		"deflate":               cfg.Deflate,
		"deflate_level":         cfg.DeflateLevel,
		"snappy":                cfg.Snappy,
		"feature_negotiation":   true,
		"heartbeat_interval":    int64(cfg.HeartbeatInterval / time.Millisecond),
		"sample_rate":           cfg.SampleRate,
		"output_buffer_size":    cfg.OutputBufferSize,
		"output_buffer_timeout": int64(cfg.OutputBufferTimeout / time.Millisecond),
		"msg_timeout":           int64(cfg.MsgTimeout / time.Millisecond),
	}
	cmd, err := nsq.Identify(ci)
	require.NoError(t, err)
	var buf bytes.Buffer
	buf.WriteString(magicV2)
	_, err = cmd.WriteTo(&buf)
	require.NoError(t, err)
	return buf.Bytes()
}

func goNSQConfig() *nsq.Config {
	cfg := nsq.NewConfig()
	cfg.ClientID = "worker-7"
	cfg.Hostname = "worker-7.example"
	cfg.UserAgent = "go-nsq/1.1.0"
	cfg.TlsV1 = true
	cfg.Deflate = true
	cfg.DeflateLevel = 3
	cfg.SampleRate = 10
	cfg.MsgTimeout = 30 * time.Second
	return cfg
}

// clientHello is the first flight of a real crypto/tls client.
func clientHello(t testing.TB) []byte {
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer client.Close()
		_ = tls.Client(client, &tls.Config{ServerName: "localhost"}).Handshake()
	}()
	require.NoError(t, server.SetReadDeadline(time.Now().Add(5*time.Second)))
	buf := make([]byte, 4096)
	n, err := server.Read(buf)
	server.Close()
	<-done // no goroutine of ours outlives the test
	require.NoError(t, err)
	return buf[:n]
}

type badOpening struct {
	name   string
	input  []byte
	code   string // "" for a *reasonError
	reason Reason
	text   string // the error text contains this
}

func badOpenings(t testing.TB) []badOpening {
	var cases []badOpening
	for _, cmd := range []string{"PUB t", "MPUB t", "DPUB t 10", "SUB t c", "AUTH", "RDY 1",
		"FIN 0123456789abcdef", "REQ 0123456789abcdef 0", "TOUCH 0123456789abcdef", "NOP",
		"CLS"} {
		name, _, _ := strings.Cut(cmd, " ")
		cases = append(cases, badOpening{
			"command before IDENTIFY " + name, withSize(cmd, 1, []byte("x")),
			"E_INVALID", ReasonPlaintextRejected, "E_INVALID cannot " + name + " before IDENTIFY",
		})
	}
	invalidCommand := func(name, line string) badOpening {
		return badOpening{name, []byte(magicV2 + line), "E_INVALID", ReasonBadProtocol,
			"E_INVALID invalid command before IDENTIFY"}
	}
	badBody := func(name, body string) badOpening {
		return badOpening{name, identifyOpening(body), "E_BAD_BODY", ReasonBadProtocol,
			"E_BAD_BODY IDENTIFY failed to decode JSON body"}
	}
	noTLS := func(name, body string) badOpening {
		return badOpening{name, identifyOpening(body), "E_IDENTIFY_FAILED",
			ReasonPlaintextRejected, "E_IDENTIFY_FAILED IDENTIFY without TLS refused"}
	}
	badSize := func(name string, size uint32, text string) badOpening {
		return badOpening{name, withSize("IDENTIFY", size, []byte(tlsBody)), "E_BAD_BODY",
			ReasonBadProtocol, text}
	}
	badMagic := func(name string, input []byte, text string) badOpening {
		return badOpening{name, input, "E_BAD_PROTOCOL", ReasonBadProtocol, text}
	}
	closed := func(name string, input []byte, text string) badOpening {
		return badOpening{name, input, "", ReasonClientClosed, text}
	}
	long := strings.Repeat("a", openingBufSize)
	hello := clientHello(t)
	require.Equal(t, []byte{0x16, 0x03, 0x01}, hello[:3], "a TLS ClientHello record")

	return append(cases,
		badOpening{"PUB with CRLF", []byte(magicV2 + "PUB t\r\n"), "E_INVALID",
			ReasonPlaintextRejected, "cannot PUB before IDENTIFY"},
		invalidCommand("unknown command", "HELLO world\n"),
		invalidCommand("lower-case identify", "identify\n"),
		invalidCommand("empty command line", "\n"),
		invalidCommand("space before IDENTIFY", " IDENTIFY\n"),
		invalidCommand("IDENTIFY glued to a word", "IDENTIFYX\n"),
		invalidCommand("tab after IDENTIFY", "IDENTIFY\t\n"),
		invalidCommand("NUL bytes", "\x00\x00\x00\n"),

		noTLS("no feature_negotiation", `{"tls_v1":true}`),
		noTLS("no tls_v1", `{"feature_negotiation":true}`),
		noTLS("tls_v1 false", `{"feature_negotiation":true,"tls_v1":false}`),
		noTLS("feature_negotiation false", `{"feature_negotiation":false,"tls_v1":true}`),
		noTLS("empty object", `{}`),
		noTLS("JSON null", `null`),
		noTLS("last duplicate key wins",
			`{"feature_negotiation":true,"tls_v1":true,"tls_v1":false}`),
		noTLS("go-nsq plaintext client", `{"client_id":"c","feature_negotiation":true,`+
			`"tls_v1":false,"deflate":false,"snappy":false,"heartbeat_interval":30000}`),

		badBody("malformed JSON", `{"tls_v1": tru`),
		badBody("not JSON", `hello`),
		badBody("JSON then garbage", tlsBody+`x`),
		badBody("two JSON objects", tlsBody+tlsBody),
		badBody("string for bool", `{"feature_negotiation":"true","tls_v1":true}`),
		badBody("number for bool", `{"feature_negotiation":true,"tls_v1":1}`),
		badBody("string for int",
			`{"feature_negotiation":true,"tls_v1":true,"msg_timeout":"60s"}`),
		badBody("float for int", `{"feature_negotiation":true,"tls_v1":true,"deflate_level":1.5}`),
		badBody("sample_rate overflows int32",
			`{"feature_negotiation":true,"tls_v1":true,"sample_rate":4294967296}`),
		badBody("object for string", `{"feature_negotiation":true,"tls_v1":true,"client_id":{}}`),
		badBody("JSON array", `[true,true]`),
		badBody("JSON string", `"feature_negotiation"`),
		badBody("control character in a string",
			"{\"client_id\":\"a\x01b\",\"feature_negotiation\":true,\"tls_v1\":true}"),

		badSize("zero body length", 0, "E_BAD_BODY IDENTIFY invalid body size 0"),
		badSize("negative body length", 0xffffffff, "E_BAD_BODY IDENTIFY invalid body size -1"),
		badSize("most negative body length", 0x80000000,
			"E_BAD_BODY IDENTIFY invalid body size -2147483648"),
		badSize("body length one over the cap", maxIdentifyBody+1,
			"E_BAD_BODY IDENTIFY body too big 16385 > 16384"),
		badSize("body length 5 MB", 5<<20, "E_BAD_BODY IDENTIFY body too big 5242880 > 16384"),
		badSize("largest body length", 0x7fffffff,
			"E_BAD_BODY IDENTIFY body too big 2147483647 > 16384"),

		badMagic("V1 magic", []byte("  V1SUB t c\n"),
			"E_BAD_PROTOCOL protocol V1 is not supported"),
		badMagic("lower-case v2", []byte("  v2IDENTIFY\n"), `bad protocol magic "  v2"`),
		badMagic("HTTP GET", []byte("GET / HTTP/1.1\r\nHost: nsqd\r\n\r\n"),
			"E_BAD_PROTOCOL HTTP request on the NSQ TCP port"),
		badMagic("HTTP POST", []byte("POST /pub?topic=t HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"),
			"E_BAD_PROTOCOL HTTP request on the NSQ TCP port"),
		badMagic("HTTP PUT", []byte("PUT / HTTP/1.1\r\n\r\n"), "HTTP request"),
		badMagic("HTTP HEAD", []byte("HEAD /ping HTTP/1.0\r\n\r\n"), "HTTP request"),
		badMagic("HTTP DELETE", []byte("DELETE /topic HTTP/1.1\r\n\r\n"), "HTTP request"),
		badMagic("HTTP OPTIONS", []byte("OPTIONS * HTTP/1.1\r\n\r\n"), "HTTP request"),
		badMagic("HTTP PATCH", []byte("PATCH / HTTP/1.1\r\n\r\n"), "HTTP request"),
		badMagic("HTTP CONNECT", []byte("CONNECT nsqd:4150 HTTP/1.1\r\n\r\n"), "HTTP request"),
		badMagic("TLS ClientHello first", hello,
			"E_BAD_PROTOCOL TLS handshake before the NSQ opening"),
		badMagic("TLS 1.2 record header", []byte{0x16, 0x03, 0x03, 0x00, 0x05},
			"TLS handshake before"),
		badMagic("random garbage", []byte("\x00\xffgarbage\n"),
			`E_BAD_PROTOCOL bad protocol magic "\x00\xffga"`),
		badMagic("binary garbage", []byte{0xff, 0xfe, 0xbe, 0xef, 0x00, 0x01},
			`bad protocol magic "\xff\xfe\xbe\xef"`),
		badMagic("UTF-8 garbage", []byte("ÿÿ\n"), `bad protocol magic "ÿÿ"`),
		badMagic("magic without leading spaces", []byte("V2  IDENTIFY\n"), "bad protocol magic"),
		badMagic("long garbage is not echoed", bytes.Repeat([]byte("A"), 64<<10),
			`bad protocol magic "AAAA"`),

		badOpening{"command line longer than the buffer",
			[]byte(magicV2 + "IDENTIFY " + long + "\n"), "E_INVALID", ReasonBadProtocol,
			"E_INVALID command line too long"},
		badOpening{"endless command line", []byte(magicV2 + long + long + long), "E_INVALID",
			ReasonBadProtocol, "E_INVALID command line too long"},

		badOpening{"plaintext command right after IDENTIFY",
			cat(identifyOpening(tlsBody), []byte("PUB t\n\x00\x00\x00\x01x")),
			"E_INVALID", ReasonPlaintextRejected,
			"E_INVALID data sent after IDENTIFY before the TLS handshake"},
		badOpening{"plaintext command after a long IDENTIFY",
			cat(identifyOpening(tlsBody[:len(tlsBody)-1]+`,"client_id":"`+
				strings.Repeat("c", 4000)+`"}`), []byte("PUB t\n")),
			"E_INVALID", ReasonPlaintextRejected,
			"E_INVALID data sent after IDENTIFY before the TLS handshake"},
		badOpening{"one byte after IDENTIFY", cat(identifyOpening(tlsBody), []byte("\n")),
			"E_INVALID", ReasonPlaintextRejected, "data sent after IDENTIFY"},
		badOpening{"ClientHello pipelined after IDENTIFY", cat(identifyOpening(tlsBody), hello),
			"E_INVALID", ReasonPlaintextRejected, "data sent after IDENTIFY"},
		badOpening{"second IDENTIFY after IDENTIFY",
			cat(identifyOpening(tlsBody), identifyOpening(tlsBody)[len(magicV2):]),
			"E_INVALID", ReasonPlaintextRejected, "data sent after IDENTIFY"},
		badOpening{"data after a go-nsq IDENTIFY",
			cat(goNSQOpening(t, goNSQConfig()), []byte("PUB t\n")),
			"E_INVALID", ReasonPlaintextRejected, "data sent after IDENTIFY"},
		// JSON is checked before trailing data: the refusal names the
		// first problem.
		badOpening{"plaintext IDENTIFY then PUB",
			cat(identifyOpening(`{"feature_negotiation":true}`), []byte("PUB t\n")),
			"E_IDENTIFY_FAILED", ReasonPlaintextRejected, "IDENTIFY without TLS refused"},

		closed("nothing sent", nil, "before sending the protocol magic"),
		closed("half a magic", []byte("  V"), "before sending the protocol magic"),
		closed("magic only", []byte(magicV2), "before sending IDENTIFY"),
		closed("IDENTIFY without newline", []byte(magicV2+"IDENTIFY"), "before sending IDENTIFY"),
		closed("no body size", []byte(magicV2+"IDENTIFY\n"), "IDENTIFY body size"),
		closed("truncated body size", []byte(magicV2+"IDENTIFY\n\x00\x00"), "IDENTIFY body size"),
		closed("no body", withSize("IDENTIFY", uint32(len(tlsBody)), nil), "the IDENTIFY body"),
		closed("truncated body", withSize("IDENTIFY", 100, []byte(tlsBody)), "the IDENTIFY body"),
		closed("body one byte short", identifyOpening(tlsBody)[:len(identifyOpening(tlsBody))-1],
			"the IDENTIFY body"),
		closed("truncated maximal body", withSize("IDENTIFY", maxIdentifyBody, []byte(tlsBody)),
			"the IDENTIFY body"),
	)
}

func TestReadOpeningRefusals(t *testing.T) {
	cases := badOpenings(t)
	readers := []struct {
		name string
		read func(*testing.T, []byte) (*identifyData, error)
	}{
		{"bytes.Reader", func(_ *testing.T, in []byte) (*identifyData, error) {
			return readOpeningBytes(in)
		}},
		{"net.Pipe", readOpeningPipe},
	}
	for _, rd := range readers {
		t.Run(rd.name, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					id, err := rd.read(t, tc.input)
					require.Error(t, err)
					assert.Nil(t, id)
					checkOpeningError(t, err)
					assert.Contains(t, err.Error(), tc.text)
					if tc.code == "" {
						var re *reasonError
						require.ErrorAs(t, err, &re)
						assert.Equal(t, tc.reason, re.reason)
						assert.Equal(t, tc.reason, handshakeReason(err, time.Now()))
						return
					}
					var oe *openingError
					require.ErrorAs(t, err, &oe, "want an error frame, got %v", err)
					assert.Equal(t, tc.code, oe.code)
					assert.Equal(t, tc.reason, oe.reason)
					assert.True(t, strings.HasPrefix(err.Error(), tc.code+" "),
						"the frame text %q starts with the code", err)
					assert.Contains(t, err.Error(), "TLS with a client certificate")
					assert.True(t, strings.HasSuffix(err.Error(), "; "+tlsRequiredHint),
						"the frame text %q ends with the hint", err)
				})
			}
		})
	}
}

// checkOpeningError holds for every error readOpening returns.
func checkOpeningError(t *testing.T, err error) {
	t.Helper()
	switch e := err.(type) {
	case *openingError:
		assert.Contains(t, []string{"E_INVALID", "E_BAD_PROTOCOL", "E_BAD_BODY",
			"E_IDENTIFY_FAILED"}, e.code)
		assert.Contains(t, []Reason{ReasonBadProtocol, ReasonPlaintextRejected}, e.reason)
		assert.NotEmpty(t, e.msg)
		assert.Contains(t, e.Error(), tlsRequiredHint)
	case *reasonError:
		assert.Contains(t, []Reason{ReasonClientClosed, ReasonTimeout}, e.reason)
		assert.NotEmpty(t, e.Error())
	default:
		t.Fatalf("readOpening returned %T %v, want *openingError or *reasonError", err, err)
	}
	assert.LessOrEqual(t, len(err.Error()), maxOpeningErrorText, "error text %q", err)
}

func TestReadOpeningAccepts(t *testing.T) {
	goNSQ := goNSQConfig()
	agent := strings.Repeat("x", maxIdentifyBody-len(tlsBody)-len(`,"user_agent":""`))
	maximal := tlsBody[:len(tlsBody)-1] + `,"user_agent":"` + agent + `"}`
	require.Len(t, maximal, maxIdentifyBody)
	cases := []struct {
		name  string
		input []byte
		want  identifyData
	}{
		{"minimal", identifyOpening(tlsBody),
			identifyData{FeatureNegotiation: true, TLSv1: true}},
		{"CRLF command line", withSize("IDENTIFY\r", uint32(len(tlsBody)), []byte(tlsBody)),
			identifyData{FeatureNegotiation: true, TLSv1: true}},
		{"IDENTIFY with parameters, which nsqd ignores",
			withSize("IDENTIFY x y", uint32(len(tlsBody)), []byte(tlsBody)),
			identifyData{FeatureNegotiation: true, TLSv1: true}},
		{"go-nsq opening", goNSQOpening(t, goNSQ), identifyData{
			ClientID: "worker-7", Hostname: "worker-7.example", UserAgent: "go-nsq/1.1.0",
			HeartbeatInterval: 30000, OutputBufferSize: 16384, OutputBufferTimeout: 250,
			FeatureNegotiation: true, TLSv1: true, Deflate: true, DeflateLevel: 3,
			SampleRate: 10, MsgTimeout: 30000,
		}},
		{"unknown fields are ignored", identifyOpening(`{"short_id":"a","long_id":"b",` +
			`"feature_negotiation":true,"tls_v1":true,"x":[1,{"y":null}]}`),
			identifyData{FeatureNegotiation: true, TLSv1: true}},
		{"keys match case-insensitively, as in nsqd",
			identifyOpening(`{"Feature_Negotiation":true,"TLS_V1":true}`),
			identifyData{FeatureNegotiation: true, TLSv1: true}},
		{"null values keep zero values", identifyOpening(
			`{"feature_negotiation":true,"tls_v1":true,"client_id":null,"msg_timeout":null}`),
			identifyData{FeatureNegotiation: true, TLSv1: true}},
		{"whitespace around JSON", identifyOpening(" \n\t" + tlsBody + "\r\n "),
			identifyData{FeatureNegotiation: true, TLSv1: true}},
		{"negative values are parsed, nsqd judges them", identifyOpening(
			`{"feature_negotiation":true,"tls_v1":true,"heartbeat_interval":-1,` +
				`"output_buffer_size":-1,"output_buffer_timeout":-1,"sample_rate":-5}`),
			identifyData{FeatureNegotiation: true, TLSv1: true, HeartbeatInterval: -1,
				OutputBufferSize: -1, OutputBufferTimeout: -1, SampleRate: -5}},
		{"body of exactly maxIdentifyBody", identifyOpening(maximal),
			identifyData{FeatureNegotiation: true, TLSv1: true, UserAgent: agent}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := readOpeningBytes(tc.input)
			require.NoError(t, err)
			require.NotNil(t, id)
			assert.Equal(t, tc.want, *id)

			id, err = readOpeningPipe(t, tc.input)
			require.NoError(t, err)
			require.NotNil(t, id)
			assert.Equal(t, tc.want, *id)
		})
	}
}

// TestReadOpeningPeerCloses ends the client's side at each step of the
// opening: there is no one to send an error frame to.
func TestReadOpeningPeerCloses(t *testing.T) {
	full := identifyOpening(tlsBody)
	for _, n := range []int{0, 2, 4, 10, len(magicV2 + "IDENTIFY\n"), len(full) - 5,
		len(full) - 1} {
		t.Run(fmt.Sprintf("after %d bytes", n), func(t *testing.T) {
			for _, p := range testPipes {
				t.Run(p.name, func(t *testing.T) {
					client, server := p.pipe(t)
					defer server.Close()
					require.NoError(t, server.SetReadDeadline(time.Now().Add(5*time.Second)))
					wrote := make(chan struct{})
					go func() {
						defer close(wrote)
						if n > 0 {
							_, _ = client.Write(full[:n])
						}
						client.Close()
					}()
					id, err := readOpening(bufio.NewReaderSize(server, openingBufSize))
					<-wrote
					assert.Nil(t, id)
					var re *reasonError
					require.ErrorAs(t, err, &re)
					assert.Equal(t, ReasonClientClosed, re.reason)
					assert.True(t, errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF),
						"%v", err)
					assert.Equal(t, ReasonClientClosed, handshakeReason(err, time.Now()))
					checkOpeningError(t, err)
				})
			}
		})
	}
}

// TestReadOpeningTimeout stops the client at each step of the opening
// while the server's read deadline runs out.
func TestReadOpeningTimeout(t *testing.T) {
	full := identifyOpening(tlsBody)
	for _, n := range []int{0, 3, 4, len(magicV2 + "IDENTIFY"), len(magicV2 + "IDENTIFY\n\x00"),
		len(full) - 1} {
		t.Run(fmt.Sprintf("after %d bytes", n), func(t *testing.T) {
			for _, p := range testPipes {
				t.Run(p.name, func(t *testing.T) {
					client, server := p.pipe(t)
					defer client.Close()
					defer server.Close()
					wrote := make(chan struct{})
					go func() {
						defer close(wrote)
						if n > 0 {
							_, _ = client.Write(full[:n])
						}
					}()
					require.NoError(t, server.SetReadDeadline(time.Now().Add(50*time.Millisecond)))
					start := time.Now()
					id, err := readOpening(bufio.NewReaderSize(server, openingBufSize))
					client.Close() // unblocks a Write the reader did not finish
					<-wrote
					assert.Nil(t, id)
					var re *reasonError
					require.ErrorAs(t, err, &re)
					assert.Equal(t, ReasonTimeout, re.reason)
					assert.Contains(t, err.Error(), "timed out")
					assert.Equal(t, ReasonTimeout, handshakeReason(err, time.Now()))
					assert.GreaterOrEqual(t, time.Since(start), 40*time.Millisecond)
					checkOpeningError(t, err)
				})
			}
		})
	}
}

var testPipes = []struct {
	name string
	pipe func(t *testing.T) (client, server net.Conn)
}{
	{"net.Pipe", func(*testing.T) (net.Conn, net.Conn) { return net.Pipe() }},
	{"tcp", tcpPipe},
}

// tcpPipe is a connected pair of loopback TCP connections.
func tcpPipe(t *testing.T) (client, server net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	server, err = ln.Accept()
	require.NoError(t, err)
	t.Cleanup(func() {
		client.Close()
		server.Close()
	})
	return client, server
}

// countingReader counts the bytes readOpening pulled from the connection.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// parseOpening is an independent reading of a valid opening: magic, an
// IDENTIFY command line, a size in (0, maxIdentifyBody] and a JSON body
// with feature_negotiation and tls_v1 true. It returns the body and the
// length of the opening.
func parseOpening(in []byte) (*identifyData, int, bool) {
	rest, ok := bytes.CutPrefix(in, []byte(magicV2))
	if !ok {
		return nil, 0, false
	}
	line, rest, ok := bytes.Cut(rest, []byte("\n"))
	if !ok {
		return nil, 0, false
	}
	cmd, _, _ := bytes.Cut(bytes.TrimSuffix(line, []byte("\r")), []byte(" "))
	if string(cmd) != "IDENTIFY" || len(rest) < 4 {
		return nil, 0, false
	}
	size := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	if size == 0 || size > maxIdentifyBody || uint32(len(rest)) < size {
		return nil, 0, false
	}
	var id identifyData
	if json.Unmarshal(rest[:size], &id) != nil || !id.FeatureNegotiation || !id.TLSv1 {
		return nil, 0, false
	}
	return &id, len(in) - len(rest) + int(size), true
}

func FuzzReadOpening(f *testing.F) {
	for _, tc := range badOpenings(f) {
		f.Add(tc.input)
	}
	for _, body := range []string{tlsBody, `{"feature_negotiation":true,"tls_v1":true,` +
		`"deflate":true,"deflate_level":9,"snappy":true,"msg_timeout":1000}`,
		`{"Feature_Negotiation":true,"TLS_V1":true,"x":null}`} {
		f.Add(identifyOpening(body))
		f.Add(withSize("IDENTIFY\r", uint32(len(body)), []byte(body)))
	}
	f.Add(goNSQOpening(f, goNSQConfig()))
	f.Add(cat(goNSQOpening(f, goNSQConfig()), clientHello(f)))
	// A long opening, alone and with plaintext after it.
	long := identifyOpening(tlsBody[:len(tlsBody)-1] + `,"client_id":"` +
		strings.Repeat("c", 1200) + `"}`)
	f.Add(long)
	f.Add(cat(long, []byte("PUB t\n")))

	f.Fuzz(func(t *testing.T, input []byte) {
		src := &countingReader{r: bytes.NewReader(input)}
		id, err := readOpening(bufio.NewReaderSize(src, openingBufSize))
		if err != nil {
			require.Nil(t, id, "an error and a body")
			checkOpeningError(t, err)
			return
		}
		require.NotNil(t, id, "readOpening returned (nil, nil)")
		want, n, ok := parseOpening(input)
		require.True(t, ok, "readOpening accepted an opening that is not magic, IDENTIFY "+
			"and a JSON body with feature_negotiation and tls_v1 true: %q", input)
		require.Equal(t, want, id)
		// Nothing after the opening may have been read and then dropped:
		// the bytes that follow belong to the TLS handshake.
		require.Equal(t, n, src.n, "readOpening read past the opening and accepted it: %q",
			input)
	})
}
