//go:build !unix

package main

import "os/exec"

// ownProcessGroup does nothing where there are no process groups;
// cancelling cmd kills only the go command itself.
func ownProcessGroup(*exec.Cmd) {}
