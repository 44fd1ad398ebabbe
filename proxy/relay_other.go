//go:build !unix

package proxy

import (
	"net"
	"syscall"
)

// Without unix sockets calls the relay holds a pooled buffer per direction
// for the life of a connection; rawConnOf returning nil selects that path.
func rawConnOf(net.Conn) syscall.RawConn { return nil }

func readNow(syscall.RawConn, []byte) (int, error)     { return 0, errWouldBlock }
func readPooled(syscall.RawConn) (*[]byte, int, error) { return nil, 0, errWouldBlock }
func waitReadable(syscall.RawConn) error               { return nil }
