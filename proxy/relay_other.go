//go:build !unix

package proxy

import "net"

// Without unix socket calls the relay holds a pooled buffer per direction
// for the life of a connection; a nil rawReader selects that path.
type rawReader struct{}

func newRawReader(net.Conn) *rawReader { return nil }

func (*rawReader) readNow([]byte) (int, error)       { return 0, errWouldBlock }
func (*rawReader) readPooled() (*[]byte, int, error) { return nil, 0, errWouldBlock }
func (*rawReader) waitReadable() error               { return nil }
