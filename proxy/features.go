package proxy

import (
	"encoding/json"
	"fmt"
)

// featureResponse is nsqd v1.3.0's answer to an IDENTIFY with
// feature_negotiation, field for field and in the same order, so that a
// client cannot tell the proxy's answer from nsqd's.
type featureResponse struct {
	MaxRdyCount         int64  `json:"max_rdy_count"`
	Version             string `json:"version"`
	MaxMsgTimeout       int64  `json:"max_msg_timeout"`
	MsgTimeout          int64  `json:"msg_timeout"`
	TLSv1               bool   `json:"tls_v1"`
	Deflate             bool   `json:"deflate"`
	DeflateLevel        int    `json:"deflate_level"`
	MaxDeflateLevel     int    `json:"max_deflate_level"`
	Snappy              bool   `json:"snappy"`
	SampleRate          int32  `json:"sample_rate"`
	AuthRequired        bool   `json:"auth_required"`
	OutputBufferSize    int    `json:"output_buffer_size"`
	OutputBufferTimeout int64  `json:"output_buffer_timeout"`
}

// upstreamSettings is what the proxy knows of nsqd's configuration, learned
// from nsqd's own answers to the proxy's IDENTIFY probes.
// The JSON names are for the log.
type upstreamSettings struct {
	Version             string `json:"version"`
	MaxRdyCount         int64  `json:"max_rdy_count"`
	MaxMsgTimeout       int64  `json:"max_msg_timeout_ms"`
	MsgTimeout          int64  `json:"msg_timeout_ms"` // default
	MaxDeflateLevel     int    `json:"max_deflate_level"`
	DeflateEnabled      bool   `json:"deflate"`
	SnappyEnabled       bool   `json:"snappy"`
	AuthRequired        bool   `json:"auth_required"`
	OutputBufferSize    int    `json:"output_buffer_size"`       // default
	OutputBufferTimeout int64  `json:"output_buffer_timeout_ms"` // default
}

// promise computes the feature answer nsqd would give to id, by nsqd's own
// rules. Values nsqd rejects (an out-of-range msg_timeout, say) are left at
// their defaults: nsqd's error frame then reaches the client inside TLS in
// place of the OK it expects, so the answer is never acted on.
func (s *upstreamSettings) promise(id *identifyData) featureResponse {
	r := featureResponse{
		MaxRdyCount:         s.MaxRdyCount,
		Version:             s.Version,
		MaxMsgTimeout:       s.MaxMsgTimeout,
		MsgTimeout:          s.MsgTimeout,
		TLSv1:               true,
		MaxDeflateLevel:     s.MaxDeflateLevel,
		Snappy:              s.SnappyEnabled && id.Snappy,
		Deflate:             s.DeflateEnabled && id.Deflate,
		DeflateLevel:        6,
		SampleRate:          id.SampleRate,
		AuthRequired:        s.AuthRequired,
		OutputBufferSize:    s.OutputBufferSize,
		OutputBufferTimeout: s.OutputBufferTimeout,
	}
	if r.Deflate && id.DeflateLevel > 0 {
		r.DeflateLevel = id.DeflateLevel
	}
	r.DeflateLevel = min(r.DeflateLevel, s.MaxDeflateLevel)

	if t := int64(id.MsgTimeout); t >= 1000 && t <= s.MaxMsgTimeout {
		r.MsgTimeout = t
	}
	switch t := id.OutputBufferTimeout; {
	case t == -1:
		r.OutputBufferTimeout = 0
	case t > 0:
		r.OutputBufferTimeout = int64(t)
	}
	switch n := id.OutputBufferSize; {
	case n == -1:
		r.OutputBufferSize = 1
		r.OutputBufferTimeout = 0
	case n > 0:
		r.OutputBufferSize = n
	}
	return r
}

// checkAnswer compares nsqd's real answer to the IDENTIFY the proxy
// replayed (with tls_v1 false) against what the proxy promised the client.
func checkAnswer(promised featureResponse, answer []byte) error {
	var got featureResponse
	if err := json.Unmarshal(answer, &got); err != nil {
		return fmt.Errorf("proxy: nsqd's IDENTIFY answer is not JSON: %w", err)
	}
	got.TLSv1 = promised.TLSv1
	if got != promised {
		return fmt.Errorf("proxy: nsqd answered %+v, the proxy had promised %+v", got, promised)
	}
	return nil
}

// settingsFrom merges nsqd's answers to the two probes: one asking for
// deflate at level 9, one asking for snappy (nsqd refuses both at once).
func settingsFrom(deflateAnswer, snappyAnswer []byte) (*upstreamSettings, error) {
	var d, s featureResponse
	if err := json.Unmarshal(deflateAnswer, &d); err != nil {
		return nil, fmt.Errorf("proxy: nsqd's IDENTIFY answer is not JSON: %w", err)
	}
	if err := json.Unmarshal(snappyAnswer, &s); err != nil {
		return nil, fmt.Errorf("proxy: nsqd's IDENTIFY answer is not JSON: %w", err)
	}
	if d.Version != s.Version {
		return nil, fmt.Errorf("proxy: nsqd version changed between probes (%s, %s)",
			d.Version, s.Version)
	}
	return &upstreamSettings{
		Version:             d.Version,
		MaxRdyCount:         d.MaxRdyCount,
		MaxMsgTimeout:       d.MaxMsgTimeout,
		MsgTimeout:          d.MsgTimeout,
		MaxDeflateLevel:     d.MaxDeflateLevel,
		DeflateEnabled:      d.Deflate,
		SnappyEnabled:       s.Snappy,
		AuthRequired:        d.AuthRequired,
		OutputBufferSize:    d.OutputBufferSize,
		OutputBufferTimeout: d.OutputBufferTimeout,
	}, nil
}
