// Package nsqdtest runs a real nsqd v1.3.0 on random loopback ports, for
// integration tests and the demo.
package nsqdtest

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Binary returns the path of an nsqd v1.3.0 binary: $NSQD_BIN when set,
// else the module's tool dependency, built by the go command on demand.
func Binary() (string, error) {
	if p := os.Getenv("NSQD_BIN"); p != "" {
		return p, nil
	}
	out, err := exec.Command("go", "tool", "-n", "nsqd").Output()
	if err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			return "", fmt.Errorf("nsqdtest: go tool -n nsqd: %w: %s", err, exitErr.Stderr)
		}
		return "", fmt.Errorf("nsqdtest: go tool -n nsqd: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// NSQD is a running nsqd process.
type NSQD struct {
	TCPAddr  string
	HTTPAddr string

	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
	log  strings.Builder
}

var listening = regexp.MustCompile(`(TCP|HTTP): listening on (\S+)`)

// Start runs nsqd with its data in dataDir, TCP and HTTP on random
// loopback ports, and extra flags appended. It returns once both
// listeners are up.
func Start(dataDir string, extra ...string) (*NSQD, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, fmt.Errorf("nsqdtest: %w", err)
	}
	args := append([]string{
		"--tcp-address=127.0.0.1:0",
		"--http-address=127.0.0.1:0",
		"--data-path=" + dataDir,
	}, extra...)
	n := &NSQD{cmd: exec.Command(bin, args...), done: make(chan struct{})}
	stderr, err := n.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := n.cmd.Start(); err != nil {
		return nil, fmt.Errorf("nsqdtest: start %s: %w", bin, err)
	}
	addrs := make(chan [2]string, 4)
	go n.readLog(stderr, addrs)
	go func() {
		_ = n.cmd.Wait()
		close(n.done)
	}()

	timeout := time.After(30 * time.Second)
	for n.TCPAddr == "" || n.HTTPAddr == "" {
		select {
		case a := <-addrs:
			if a[0] == "TCP" {
				n.TCPAddr = a[1]
			} else {
				n.HTTPAddr = a[1]
			}
		case <-n.done:
			return nil, fmt.Errorf("nsqdtest: nsqd exited at start:\n%s", n.Log())
		case <-timeout:
			n.Stop()
			return nil, fmt.Errorf("nsqdtest: nsqd did not start:\n%s", n.Log())
		}
	}
	return n, nil
}

func (n *NSQD) readLog(r io.Reader, addrs chan<- [2]string) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		n.mu.Lock()
		n.log.WriteString(line + "\n")
		n.mu.Unlock()
		if m := listening.FindStringSubmatch(line); m != nil {
			addrs <- [2]string{m[1], m[2]}
		}
	}
}

// Log is everything nsqd has written to stderr so far.
func (n *NSQD) Log() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.log.String()
}

// Stop ends nsqd with SIGTERM and waits for it, killing it after 10s.
func (n *NSQD) Stop() {
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		_ = n.cmd.Process.Kill()
		<-n.done
	}
}

// Stats is the part of nsqd's /stats that tests look at.
type Stats struct {
	Topics []struct {
		TopicName    string `json:"topic_name"`
		MessageCount uint64 `json:"message_count"`
		Channels     []struct {
			ChannelName string   `json:"channel_name"`
			Depth       int64    `json:"depth"`
			InFlight    int      `json:"in_flight_count"`
			Clients     []Client `json:"clients"`
		} `json:"channels"`
	} `json:"topics"`
	Producers []Client `json:"producers"`
}

// Client is one client row of /stats.
type Client struct {
	ClientID      string `json:"client_id"`
	Hostname      string `json:"hostname"`
	RemoteAddress string `json:"remote_address"`
	UserAgent     string `json:"user_agent"`
	TLS           bool   `json:"tls"`
	Snappy        bool   `json:"snappy"`
	Deflate       bool   `json:"deflate"`
	AuthIdentity  string `json:"auth_identity"`
}

// Stats fetches /stats?format=json.
func (n *NSQD) Stats(ctx context.Context) (*Stats, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		"http://"+n.HTTPAddr+"/stats?format=json&include_clients=true", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("nsqdtest: /stats: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("nsqdtest: /stats: %s", resp.Status)
	}
	var s Stats
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&s); err != nil {
		return nil, fmt.Errorf("nsqdtest: /stats: %w", err)
	}
	return &s, nil
}

// Clients lists every client /stats shows: producers and the clients of
// every channel.
func (s *Stats) Clients() []Client {
	out := append([]Client(nil), s.Producers...)
	for _, t := range s.Topics {
		for _, c := range t.Channels {
			out = append(out, c.Clients...)
		}
	}
	return out
}

// Pause stops nsqd with SIGSTOP: it keeps its sockets but answers nothing.
func (n *NSQD) Pause() error { return n.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused nsqd.
func (n *NSQD) Resume() error { return n.cmd.Process.Signal(syscall.SIGCONT) }
