//go:build !unix

package revocation

import "os"

// inode is unknown here; modification time and size alone tell changes.
func inode(os.FileInfo) uint64 { return 0 }
