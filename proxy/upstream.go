package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Version is the proxy's version, sent to nsqd in its probes' user_agent.
var Version = "0.1.0"

// upstream is the way to nsqd. It dials connections for verified clients
// and keeps nsqd's settings current: it learns them with two short IDENTIFY
// probes and then holds the second probe's connection open, idle and
// without heartbeats, so that an nsqd restart shows up as that connection
// ending and the settings are learned again.
type upstream struct {
	network     string
	addr        string
	dialTimeout time.Duration
	log         *zap.Logger

	settings atomic.Pointer[upstreamSettings]
	relearn  chan struct{}
}

func newUpstream(addr string, dialTimeout time.Duration, log *zap.Logger) *upstream {
	return &upstream{
		network:     upstreamNetwork(addr),
		addr:        addr,
		dialTimeout: dialTimeout,
		log:         log,
		relearn:     make(chan struct{}, 1),
	}
}

// requestRelearn asks the watcher to learn nsqd's settings again, e.g.
// after nsqd answered a client differently than the proxy had promised.
func (u *upstream) requestRelearn() {
	select {
	case u.relearn <- struct{}{}:
	default:
	}
}

// identify dials nsqd and sends the magic and an IDENTIFY with body. It
// returns the connection and nsqd's answer frame, all within the dial
// timeout. The connection's deadline is cleared on success.
func (u *upstream) identify(ctx context.Context, body []byte) (net.Conn, int32, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, u.dialTimeout)
	defer cancel()
	d := net.Dialer{}
	conn, err := d.DialContext(ctx, u.network, u.addr)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("proxy: dial nsqd: %w", err)
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)

	if _, err := io.WriteString(conn, magicV2); err != nil {
		conn.Close()
		return nil, 0, nil, fmt.Errorf("proxy: write to nsqd: %w", err)
	}
	if err := writeCommand(conn, "IDENTIFY", body); err != nil {
		conn.Close()
		return nil, 0, nil, fmt.Errorf("proxy: write to nsqd: %w", err)
	}
	frameType, data, err := readFrame(conn)
	if err != nil {
		conn.Close()
		return nil, 0, nil, fmt.Errorf("proxy: read IDENTIFY answer from nsqd: %w", err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, frameType, data, nil
}

// probe asks nsqd for its feature answer. The returned connection is still
// open; nsqd may already have switched it to the compression asked for.
func (u *upstream) probe(ctx context.Context, compression string) (net.Conn, []byte, error) {
	req := map[string]any{
		"feature_negotiation": true,
		"heartbeat_interval":  -1,
		"client_id":           "nsqtls-proxy",
		"user_agent":          "nsqtls-proxy/" + Version + " settings-probe",
	}
	switch compression {
	case "deflate":
		req["deflate"] = true
		req["deflate_level"] = 9
	case "snappy":
		req["snappy"] = true
	}
	body, _ := json.Marshal(req)
	conn, frameType, data, err := u.identify(ctx, body)
	if err != nil {
		return nil, nil, err
	}
	if frameType != frameTypeResponse {
		conn.Close()
		return nil, nil, fmt.Errorf("proxy: nsqd refused the settings probe: %s", data)
	}
	return conn, data, nil
}

// learn runs both probes and returns nsqd's settings and the connection to
// watch.
func (u *upstream) learn(ctx context.Context) (*upstreamSettings, net.Conn, error) {
	deflateConn, deflateAnswer, err := u.probe(ctx, "deflate")
	if err != nil {
		return nil, nil, err
	}
	awaitUpgradeOK(deflateConn, deflateAnswer)
	deflateConn.Close()

	watch, snappyAnswer, err := u.probe(ctx, "snappy")
	if err != nil {
		return nil, nil, err
	}
	settings, err := settingsFrom(deflateAnswer, snappyAnswer)
	if err != nil {
		watch.Close()
		return nil, nil, err
	}
	return settings, watch, nil
}

// watch keeps the settings current until ctx ends.
func (u *upstream) watch(ctx context.Context) {
	const maxBackoff = 5 * time.Second
	backoff := 100 * time.Millisecond
	failures := 0
	for ctx.Err() == nil {
		settings, conn, err := u.learn(ctx)
		if err != nil {
			failures++
			u.logProbeFailure(err, failures)
			sleep(ctx, backoff)
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		failures, backoff = 0, 100*time.Millisecond
		if old := u.settings.Swap(settings); old == nil || *old != *settings {
			u.log.Info("learned nsqd settings", zap.String(FieldUpstreamAddr, u.addr),
				zap.Any("settings", settings))
		}
		u.waitForChange(ctx, conn)
	}
}

func (u *upstream) logProbeFailure(err error, failures int) {
	fields := []zap.Field{zap.String(FieldUpstreamAddr, u.addr), zap.Error(err)}
	switch {
	case u.settings.Load() == nil && failures == 1:
		u.log.Warn("cannot learn nsqd settings yet; clients are refused until nsqd answers",
			fields...)
	case failures == 1:
		u.log.Warn("nsqd is not answering; keeping its last known settings", fields...)
	default:
		u.log.Debug("nsqd still not answering", fields...)
	}
}

// awaitUpgradeOK reads the compressed OK nsqd sends after agreeing to
// compress, so that closing the probe does not make nsqd log a broken
// pipe.
func awaitUpgradeOK(conn net.Conn, answer []byte) {
	var r featureResponse
	if json.Unmarshal(answer, &r) != nil || !r.Deflate && !r.Snappy {
		return
	}
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = conn.Read(make([]byte, 64))
}

// waitForChange blocks until the watched connection ends, a relearn is
// requested, or ctx ends.
func (u *upstream) waitForChange(ctx context.Context, conn net.Conn) {
	ended := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, conn)
		close(ended)
	}()
	select {
	case <-ended:
		u.log.Info("connection to nsqd ended; learning its settings again",
			zap.String(FieldUpstreamAddr, u.addr))
	case <-u.relearn:
	case <-ctx.Done():
	}
	conn.Close()
	<-ended
}

// waitForSettings blocks until the first settings are known or ctx ends.
func (u *upstream) waitForSettings(ctx context.Context) error {
	for u.settings.Load() == nil {
		if !sleep(ctx, 20*time.Millisecond) {
			return ctx.Err()
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
