package proxy

import (
	"encoding/binary"
	"fmt"
	"io"
)

// NSQ frame types, as nsqd sends them.
const (
	frameTypeResponse int32 = 0
	frameTypeError    int32 = 1
)

// maxControlFrame caps frames the proxy itself reads from nsqd during the
// opening: IDENTIFY answers and errors are a few hundred bytes.
const maxControlFrame = 64 << 10

// appendFrame appends an NSQ frame: size, type, data.
func appendFrame(dst []byte, frameType int32, data []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(4+len(data)))
	dst = binary.BigEndian.AppendUint32(dst, uint32(frameType))
	return append(dst, data...)
}

func writeFrame(w io.Writer, frameType int32, data []byte) error {
	_, err := w.Write(appendFrame(make([]byte, 0, 8+len(data)), frameType, data))
	return err
}

// readFrame reads one frame sent by nsqd during the opening.
func readFrame(r io.Reader) (int32, []byte, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	size := binary.BigEndian.Uint32(hdr[:4])
	if size < 4 || size > maxControlFrame {
		return 0, nil, fmt.Errorf("proxy: bad frame size %d from nsqd", size)
	}
	data := make([]byte, size-4)
	if _, err := io.ReadFull(r, data); err != nil {
		return 0, nil, err
	}
	return int32(binary.BigEndian.Uint32(hdr[4:])), data, nil
}

// writeCommand writes an NSQ command line with an optional length-prefixed
// body.
func writeCommand(w io.Writer, line string, body []byte) error {
	buf := make([]byte, 0, len(line)+5+len(body))
	buf = append(buf, line...)
	buf = append(buf, '\n')
	if body != nil {
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(body)))
		buf = append(buf, body...)
	}
	_, err := w.Write(buf)
	return err
}
