package proxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

const (
	magicV2 = "  V2"

	// maxIdentifyBody caps the IDENTIFY body read before TLS. Real clients
	// send a few hundred bytes; nsqd would accept up to --max-body-size
	// (5 MB), which is far too much to buffer for an unauthenticated peer.
	maxIdentifyBody = 16 << 10

	// maxCommandLine caps the command line before the IDENTIFY body.
	maxCommandLine = 256

	// openingBufSize is larger than any acceptable opening, so that every
	// read goes through the buffer and plaintext sent along with the
	// IDENTIFY shows up as buffered bytes.
	openingBufSize = maxIdentifyBody + maxCommandLine + 8

	tlsRequiredHint = "this nsqtls-proxy requires TLS with a client certificate " +
		"(IDENTIFY with feature_negotiation and tls_v1 true)"
)

// identifyData is the IDENTIFY body, with the same fields and JSON rules
// as nsqd v1.3.0's identifyDataV2. Fields nsqd does not know are dropped
// when the body is replayed to nsqd, so both see the same request.
type identifyData struct {
	ClientID            string `json:"client_id"`
	Hostname            string `json:"hostname"`
	HeartbeatInterval   int    `json:"heartbeat_interval"`
	OutputBufferSize    int    `json:"output_buffer_size"`
	OutputBufferTimeout int    `json:"output_buffer_timeout"`
	FeatureNegotiation  bool   `json:"feature_negotiation"`
	TLSv1               bool   `json:"tls_v1"`
	Deflate             bool   `json:"deflate"`
	DeflateLevel        int    `json:"deflate_level"`
	Snappy              bool   `json:"snappy"`
	SampleRate          int32  `json:"sample_rate"`
	UserAgent           string `json:"user_agent"`
	MsgTimeout          int    `json:"msg_timeout"`
}

// openingError is a refusal of the plaintext opening. It becomes an NSQ
// error frame, "<code> <msg>", sent before the connection is closed.
type openingError struct {
	code   string
	reason Reason
	msg    string
}

func (e *openingError) Error() string { return e.code + " " + e.msg }

// refuse builds an openingError whose text ends by saying what the proxy
// requires.
func refuse(code string, reason Reason, format string, args ...any) *openingError {
	return &openingError{code: code, reason: reason,
		msg: fmt.Sprintf(format, args...) + "; " + tlsRequiredHint}
}

// nsqCommands are the commands of nsqd's V2 protocol other than IDENTIFY.
var nsqCommands = map[string]bool{
	"FIN": true, "RDY": true, "REQ": true, "PUB": true, "MPUB": true, "DPUB": true,
	"NOP": true, "TOUCH": true, "SUB": true, "CLS": true, "AUTH": true,
}

// openingReaders pools the readers of the opening; a connection holds one
// only until its IDENTIFY has been read.
var openingReaders = sync.Pool{New: func() any {
	return bufio.NewReaderSize(nil, openingBufSize)
}}

func getOpeningReader(r io.Reader) *bufio.Reader {
	br := openingReaders.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

func putOpeningReader(br *bufio.Reader) {
	br.Reset(nil)
	openingReaders.Put(br)
}

// readOpening reads the plaintext opening of an NSQ client: the magic, the
// IDENTIFY command and its body. It returns the parsed body, or an
// *openingError that says what was wrong, or the read error itself when
// the peer went away or timed out.
func readOpening(r *bufio.Reader) (*identifyData, error) {
	var magic [4]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil {
		return nil, cutShort(err, "before sending the protocol magic")
	}
	if string(magic[:]) != magicV2 {
		return nil, badMagic(magic[:])
	}

	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) || len(line) > maxCommandLine {
		return nil, refuse("E_INVALID", ReasonBadProtocol, "command line too long")
	}
	if err != nil {
		return nil, cutShort(err, "before sending IDENTIFY")
	}
	if err := checkIdentifyCommand(line); err != nil {
		return nil, err
	}

	body, err := readIdentifyBody(r)
	if err != nil {
		return nil, err
	}
	var id identifyData
	if err := json.Unmarshal(body, &id); err != nil {
		return nil, refuse("E_BAD_BODY", ReasonBadProtocol,
			"IDENTIFY failed to decode JSON body")
	}
	if !id.FeatureNegotiation || !id.TLSv1 {
		return nil, refuse("E_IDENTIFY_FAILED", ReasonPlaintextRejected,
			"IDENTIFY without TLS refused")
	}
	if r.Buffered() > 0 {
		return nil, refuse("E_INVALID", ReasonPlaintextRejected,
			"data sent after IDENTIFY before the TLS handshake")
	}
	return &id, nil
}

func badMagic(magic []byte) *openingError {
	switch {
	case string(magic) == "  V1":
		return refuse("E_BAD_PROTOCOL", ReasonBadProtocol,
			"protocol V1 is not supported")
	case isHTTPStart(magic):
		return refuse("E_BAD_PROTOCOL", ReasonBadProtocol,
			"HTTP request on the NSQ TCP port")
	case magic[0] == 0x16:
		return refuse("E_BAD_PROTOCOL", ReasonBadProtocol,
			"TLS handshake before the NSQ opening")
	}
	return refuse("E_BAD_PROTOCOL", ReasonBadProtocol,
		"bad protocol magic %q", magic)
}

func isHTTPStart(b []byte) bool {
	for _, m := range []string{"GET ", "POST", "PUT ", "HEAD", "DELE", "OPTI", "PATC", "CONN"} {
		if string(b) == m {
			return true
		}
	}
	return false
}

func checkIdentifyCommand(line []byte) error {
	line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
	name, _, _ := bytes.Cut(line, []byte(" "))
	if string(name) == "IDENTIFY" {
		return nil
	}
	if nsqCommands[string(name)] {
		return refuse("E_INVALID", ReasonPlaintextRejected,
			"cannot %s before IDENTIFY", name)
	}
	return refuse("E_INVALID", ReasonBadProtocol, "invalid command before IDENTIFY")
}

func readIdentifyBody(r *bufio.Reader) ([]byte, error) {
	var size [4]byte
	if _, err := io.ReadFull(r, size[:]); err != nil {
		return nil, cutShort(err, "while sending the IDENTIFY body size")
	}
	n := int32(binary.BigEndian.Uint32(size[:]))
	if n <= 0 {
		return nil, refuse("E_BAD_BODY", ReasonBadProtocol, "IDENTIFY invalid body size %d", n)
	}
	if n > maxIdentifyBody {
		return nil, refuse("E_BAD_BODY", ReasonBadProtocol, "IDENTIFY body too big %d > %d",
			n, maxIdentifyBody)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, cutShort(err, "while sending the IDENTIFY body")
	}
	return body, nil
}

// cutShort keeps timeouts and closed connections apart from protocol
// errors: there is no one left to send an error frame to, or no time.
func cutShort(err error, when string) error {
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return &reasonError{reason: ReasonTimeout, err: fmt.Errorf("proxy: client timed out %s", when)}
	}
	return &reasonError{reason: ReasonClientClosed,
		err: fmt.Errorf("proxy: client went away %s: %w", when, err)}
}
