package proxy

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nsqtls/nsqtls-proxy/internal/nsqdtest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

// defaultSettings are nsqd v1.3.0's defaults as the probes learn them.
func defaultSettings() upstreamSettings {
	return upstreamSettings{
		Version:             "1.3.0",
		MaxRdyCount:         2500,
		MaxMsgTimeout:       900000,
		MsgTimeout:          60000,
		MaxDeflateLevel:     6,
		DeflateEnabled:      true,
		SnappyEnabled:       true,
		OutputBufferSize:    16384,
		OutputBufferTimeout: 250,
	}
}

// defaultAnswer is what nsqd with defaultSettings answers to a bare
// IDENTIFY with feature_negotiation, with tls_v1 as the proxy promises it.
func defaultAnswer() featureResponse {
	return featureResponse{
		MaxRdyCount:         2500,
		Version:             "1.3.0",
		MaxMsgTimeout:       900000,
		MsgTimeout:          60000,
		TLSv1:               true,
		DeflateLevel:        6,
		MaxDeflateLevel:     6,
		OutputBufferSize:    16384,
		OutputBufferTimeout: 250,
	}
}

func maxDeflate(level int) func(*upstreamSettings) {
	return func(s *upstreamSettings) { s.MaxDeflateLevel = level }
}

func deflateAt(on bool, level, maxLevel int) func(*featureResponse) {
	return func(r *featureResponse) {
		r.Deflate, r.DeflateLevel, r.MaxDeflateLevel = on, level, maxLevel
	}
}

func TestPromise(t *testing.T) {
	cases := []struct {
		name     string
		settings func(*upstreamSettings) // nil: defaultSettings
		id       identifyData            // feature_negotiation and tls_v1 are set
		want     func(*featureResponse)  // changes from defaultAnswer
	}{
		{"bare IDENTIFY", nil, identifyData{}, nil},

		// Deflate: nsqd's level is 6 unless deflate is on and a level > 0 is
		// asked; either way it is capped at max_deflate_level.
		{"deflate asked and enabled", nil, identifyData{Deflate: true},
			func(r *featureResponse) { r.Deflate = true }},
		{"deflate asked, disabled in nsqd", func(s *upstreamSettings) { s.DeflateEnabled = false },
			identifyData{Deflate: true, DeflateLevel: 3}, nil},
		{"deflate enabled, not asked", nil, identifyData{DeflateLevel: 3}, nil},
		{"deflate_level 0", nil, identifyData{Deflate: true, DeflateLevel: 0},
			func(r *featureResponse) { r.Deflate = true }},
		{"deflate_level 3", nil, identifyData{Deflate: true, DeflateLevel: 3},
			func(r *featureResponse) { r.Deflate, r.DeflateLevel = true, 3 }},
		{"deflate_level 9 over max 6", nil, identifyData{Deflate: true, DeflateLevel: 9},
			func(r *featureResponse) { r.Deflate = true }},
		{"deflate_level -1", nil, identifyData{Deflate: true, DeflateLevel: -1},
			func(r *featureResponse) { r.Deflate = true }},
		{"deflate_level 9 under max 9", maxDeflate(9),
			identifyData{Deflate: true, DeflateLevel: 9}, deflateAt(true, 9, 9)},
		{"max_deflate_level 5 caps the default", maxDeflate(5), identifyData{},
			deflateAt(false, 5, 5)},
		{"max_deflate_level 5, deflate asked", maxDeflate(5), identifyData{Deflate: true},
			deflateAt(true, 5, 5)},
		{"max_deflate_level 1, deflate disabled", func(s *upstreamSettings) {
			s.MaxDeflateLevel, s.DeflateEnabled = 1, false
		}, identifyData{Deflate: true, DeflateLevel: 9},
			func(r *featureResponse) { r.DeflateLevel, r.MaxDeflateLevel = 1, 1 }},

		{"snappy asked and enabled", nil, identifyData{Snappy: true},
			func(r *featureResponse) { r.Snappy = true }},
		{"snappy asked, disabled in nsqd", func(s *upstreamSettings) { s.SnappyEnabled = false },
			identifyData{Snappy: true}, nil},
		{"snappy enabled, not asked", nil, identifyData{Snappy: false}, nil},
		// nsqd refuses both at once with an error frame; the promise is
		// then never acted on.
		{"deflate and snappy, snappy disabled", func(s *upstreamSettings) {
			s.SnappyEnabled = false
		}, identifyData{Snappy: true, Deflate: true},
			func(r *featureResponse) { r.Deflate = true }},
		{"deflate and snappy, deflate disabled", func(s *upstreamSettings) {
			s.DeflateEnabled = false
		}, identifyData{Snappy: true, Deflate: true},
			func(r *featureResponse) { r.Snappy = true }},

		{"msg_timeout 0 keeps the default", nil, identifyData{MsgTimeout: 0}, nil},
		{"msg_timeout 1000", nil, identifyData{MsgTimeout: 1000},
			func(r *featureResponse) { r.MsgTimeout = 1000 }},
		{"msg_timeout in range", nil, identifyData{MsgTimeout: 30000},
			func(r *featureResponse) { r.MsgTimeout = 30000 }},
		{"msg_timeout at max", nil, identifyData{MsgTimeout: 900000},
			func(r *featureResponse) { r.MsgTimeout = 900000 }},
		{"msg_timeout over max (nsqd refuses)", nil, identifyData{MsgTimeout: 900001}, nil},
		{"msg_timeout under 1s (nsqd refuses)", nil, identifyData{MsgTimeout: 999}, nil},
		{"msg_timeout negative (nsqd refuses)", nil, identifyData{MsgTimeout: -1}, nil},
		{"msg_timeout with lower max", func(s *upstreamSettings) {
			s.MaxMsgTimeout, s.MsgTimeout = 120000, 30000
		}, identifyData{MsgTimeout: 120000}, func(r *featureResponse) {
			r.MaxMsgTimeout, r.MsgTimeout = 120000, 120000
		}},
		{"msg_timeout over lower max", func(s *upstreamSettings) {
			s.MaxMsgTimeout, s.MsgTimeout = 120000, 30000
		}, identifyData{MsgTimeout: 120001}, func(r *featureResponse) {
			r.MaxMsgTimeout, r.MsgTimeout = 120000, 30000
		}},

		{"output_buffer_size -1 disables buffering", nil, identifyData{OutputBufferSize: -1},
			func(r *featureResponse) { r.OutputBufferSize, r.OutputBufferTimeout = 1, 0 }},
		{"output_buffer_size 0 keeps the default", nil, identifyData{OutputBufferSize: 0}, nil},
		{"output_buffer_size 64", nil, identifyData{OutputBufferSize: 64},
			func(r *featureResponse) { r.OutputBufferSize = 64 }},
		{"output_buffer_size 65536", nil, identifyData{OutputBufferSize: 65536},
			func(r *featureResponse) { r.OutputBufferSize = 65536 }},
		{"output_buffer_timeout -1", nil, identifyData{OutputBufferTimeout: -1},
			func(r *featureResponse) { r.OutputBufferTimeout = 0 }},
		{"output_buffer_timeout 0 keeps the default", nil, identifyData{}, nil},
		{"output_buffer_timeout 250", nil, identifyData{OutputBufferTimeout: 250}, nil},
		{"output_buffer_timeout 1000", nil, identifyData{OutputBufferTimeout: 1000},
			func(r *featureResponse) { r.OutputBufferTimeout = 1000 }},
		{"output_buffer_size -1 wins over output_buffer_timeout", nil,
			identifyData{OutputBufferSize: -1, OutputBufferTimeout: 1000},
			func(r *featureResponse) { r.OutputBufferSize, r.OutputBufferTimeout = 1, 0 }},
		{"output buffer size and timeout", nil,
			identifyData{OutputBufferSize: 128, OutputBufferTimeout: -1},
			func(r *featureResponse) { r.OutputBufferSize, r.OutputBufferTimeout = 128, 0 }},
		{"other nsqd defaults", func(s *upstreamSettings) {
			s.OutputBufferSize, s.OutputBufferTimeout = 4096, 100
		}, identifyData{}, func(r *featureResponse) {
			r.OutputBufferSize, r.OutputBufferTimeout = 4096, 100
		}},

		{"sample_rate 0", nil, identifyData{SampleRate: 0}, nil},
		{"sample_rate 1", nil, identifyData{SampleRate: 1},
			func(r *featureResponse) { r.SampleRate = 1 }},
		{"sample_rate 99", nil, identifyData{SampleRate: 99},
			func(r *featureResponse) { r.SampleRate = 99 }},

		{"auth required", func(s *upstreamSettings) { s.AuthRequired = true }, identifyData{},
			func(r *featureResponse) { r.AuthRequired = true }},
		{"version and max_rdy_count", func(s *upstreamSettings) {
			s.Version, s.MaxRdyCount = "1.3.0-custom", 100
		}, identifyData{}, func(r *featureResponse) {
			r.Version, r.MaxRdyCount = "1.3.0-custom", 100
		}},
		{"fields nsqd does not answer", nil, identifyData{ClientID: "c", Hostname: "h",
			UserAgent: "u", HeartbeatInterval: 1000}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := defaultSettings()
			if tc.settings != nil {
				tc.settings(&s)
			}
			id := tc.id
			id.FeatureNegotiation, id.TLSv1 = true, true
			want := defaultAnswer()
			if tc.want != nil {
				tc.want(&want)
			}
			got := s.promise(&id)
			assert.Equal(t, want, got)
			assert.True(t, got.TLSv1, "the proxy always promises TLS")
		})
	}
}

// nsqdAnswer marshals r as nsqd v1.3.0 would, with its tls_v1.
func nsqdAnswer(t *testing.T, r featureResponse, tlsv1 bool) []byte {
	r.TLSv1 = tlsv1
	b, err := json.Marshal(r)
	require.NoError(t, err)
	return b
}

func TestCheckAnswer(t *testing.T) {
	promised := defaultAnswer()
	promised.Deflate, promised.DeflateLevel, promised.SampleRate = true, 3, 7

	t.Run("identical answers pass", func(t *testing.T) {
		assert.NoError(t, checkAnswer(promised, nsqdAnswer(t, promised, true)))
		assert.NoError(t, checkAnswer(promised, nsqdAnswer(t, promised, false)),
			"nsqd without TLS answers tls_v1 false")
	})
	t.Run("nsqd's own text passes", func(t *testing.T) {
		answer := `{"max_rdy_count":2500,"version":"1.3.0","max_msg_timeout":900000,` +
			`"msg_timeout":60000,"tls_v1":false,"deflate":true,"deflate_level":3,` +
			`"max_deflate_level":6,"snappy":false,"sample_rate":7,"auth_required":false,` +
			`"output_buffer_size":16384,"output_buffer_timeout":250}`
		assert.NoError(t, checkAnswer(promised, []byte(answer)))
		assert.JSONEq(t, answer, string(nsqdAnswer(t, promised, false)))
		assert.Equal(t, answer, string(nsqdAnswer(t, promised, false)),
			"the proxy's answer has nsqd's field order")
	})

	differ := []struct {
		name   string
		change func(*featureResponse)
	}{
		{"max_rdy_count", func(r *featureResponse) { r.MaxRdyCount = 2499 }},
		{"version", func(r *featureResponse) { r.Version = "1.3.1" }},
		{"max_msg_timeout", func(r *featureResponse) { r.MaxMsgTimeout = 1 }},
		{"msg_timeout", func(r *featureResponse) { r.MsgTimeout = 60001 }},
		{"deflate", func(r *featureResponse) { r.Deflate = false }},
		{"deflate_level", func(r *featureResponse) { r.DeflateLevel = 6 }},
		{"max_deflate_level", func(r *featureResponse) { r.MaxDeflateLevel = 9 }},
		{"snappy", func(r *featureResponse) { r.Snappy = true }},
		{"sample_rate", func(r *featureResponse) { r.SampleRate = 0 }},
		{"auth_required", func(r *featureResponse) { r.AuthRequired = true }},
		{"output_buffer_size", func(r *featureResponse) { r.OutputBufferSize = 1 }},
		{"output_buffer_timeout", func(r *featureResponse) { r.OutputBufferTimeout = 0 }},
	}
	for _, tc := range differ {
		t.Run("differing "+tc.name+" fails", func(t *testing.T) {
			answer := promised
			tc.change(&answer)
			for _, tlsv1 := range []bool{false, true} {
				err := checkAnswer(promised, nsqdAnswer(t, answer, tlsv1))
				require.Error(t, err)
				assert.Contains(t, err.Error(), "proxy had promised")
			}
		})
	}
	// Every field of featureResponse is covered above.
	var fields map[string]any
	require.NoError(t, json.Unmarshal(nsqdAnswer(t, promised, true), &fields))
	assert.Len(t, differ, len(fields)-1, "one case per field but tls_v1")

	for _, answer := range []string{"", "OK", "E_INVALID x", "{", "[1]",
		`{"max_rdy_count":"2500"}`} {
		t.Run(fmt.Sprintf("non-JSON %q fails", answer), func(t *testing.T) {
			err := checkAnswer(promised, []byte(answer))
			require.Error(t, err)
			assert.Contains(t, err.Error(), "not JSON")
		})
	}
	for _, answer := range []string{"{}", "null"} {
		t.Run(fmt.Sprintf("empty JSON %s fails", answer), func(t *testing.T) {
			assert.Error(t, checkAnswer(promised, []byte(answer)))
		})
	}
}

func TestSettingsFrom(t *testing.T) {
	const deflateProbe = `{"max_rdy_count":2500,"version":"1.3.0","max_msg_timeout":900000,` +
		`"msg_timeout":60000,"tls_v1":false,"deflate":true,"deflate_level":6,` +
		`"max_deflate_level":6,"snappy":false,"sample_rate":0,"auth_required":false,` +
		`"output_buffer_size":16384,"output_buffer_timeout":250}`
	const snappyProbe = `{"max_rdy_count":2500,"version":"1.3.0","max_msg_timeout":900000,` +
		`"msg_timeout":60000,"tls_v1":false,"deflate":false,"deflate_level":6,` +
		`"max_deflate_level":6,"snappy":true,"sample_rate":0,"auth_required":false,` +
		`"output_buffer_size":16384,"output_buffer_timeout":250}`
	r := strings.NewReplacer
	cases := []struct {
		name           string
		deflate, snapp string
		want           func(*upstreamSettings) // changes from defaultSettings
		err            string
	}{
		{"defaults", deflateProbe, snappyProbe, nil, ""},
		{"deflate disabled",
			r(`"deflate":true`, `"deflate":false`).Replace(deflateProbe), snappyProbe,
			func(s *upstreamSettings) { s.DeflateEnabled = false }, ""},
		{"snappy disabled", deflateProbe,
			r(`"snappy":true`, `"snappy":false`).Replace(snappyProbe),
			func(s *upstreamSettings) { s.SnappyEnabled = false }, ""},
		{"max deflate level 9",
			r(`"deflate_level":6,"max_deflate_level":6`,
				`"deflate_level":9,"max_deflate_level":9`).Replace(deflateProbe), snappyProbe,
			func(s *upstreamSettings) { s.MaxDeflateLevel = 9 }, ""},
		{"other limits", r(`"max_rdy_count":2500`, `"max_rdy_count":100`,
			`"max_msg_timeout":900000`, `"max_msg_timeout":120000`,
			`"msg_timeout":60000`, `"msg_timeout":30000`,
			`"auth_required":false`, `"auth_required":true`,
			`"output_buffer_size":16384`, `"output_buffer_size":4096`,
			`"output_buffer_timeout":250`, `"output_buffer_timeout":100`).Replace(deflateProbe),
			snappyProbe, func(s *upstreamSettings) {
				s.MaxRdyCount, s.MaxMsgTimeout, s.MsgTimeout = 100, 120000, 30000
				s.AuthRequired = true
				s.OutputBufferSize, s.OutputBufferTimeout = 4096, 100
			}, ""},
		{"version changed between probes", deflateProbe,
			r(`"1.3.0"`, `"1.3.1"`).Replace(snappyProbe), nil, "version changed"},
		{"deflate answer not JSON", "OK", snappyProbe, nil, "not JSON"},
		{"snappy answer not JSON", deflateProbe, "E_IDENTIFY_FAILED x", nil, "not JSON"},
		{"wrong types", `{"max_rdy_count":"many"}`, snappyProbe, nil, "not JSON"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := settingsFrom([]byte(tc.deflate), []byte(tc.snapp))
			if tc.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
				assert.Nil(t, got)
				return
			}
			require.NoError(t, err)
			want := defaultSettings()
			if tc.want != nil {
				tc.want(&want)
			}
			assert.Equal(t, &want, got)
		})
	}
}

// clientIdentifies are IDENTIFY bodies a client may send, valid or not by
// nsqd's rules.
func clientIdentifies() map[string]identifyData {
	ids := map[string]identifyData{
		"bare": {},
		"go-nsq defaults": {ClientID: "c", Hostname: "h", UserAgent: "go-nsq/1.1.0",
			HeartbeatInterval: 30000, OutputBufferSize: 16384, OutputBufferTimeout: 250,
			DeflateLevel: 6},
		"deflate and snappy": {Deflate: true, Snappy: true},
		"snappy":             {Snappy: true},
		"snappy and level":   {Snappy: true, DeflateLevel: 2},
		"all at once": {Deflate: true, DeflateLevel: 4, MsgTimeout: 5000, SampleRate: 25,
			OutputBufferSize: 256, OutputBufferTimeout: 50, HeartbeatInterval: 5000},
		"everything off": {OutputBufferSize: -1, OutputBufferTimeout: -1,
			HeartbeatInterval: -1},
		"size -1 with timeout": {OutputBufferSize: -1, OutputBufferTimeout: 1000},
	}
	for _, l := range []int{-1, 0, 1, 3, 5, 6, 9, 10} {
		ids[fmt.Sprintf("deflate level %d", l)] = identifyData{Deflate: true, DeflateLevel: l}
		ids[fmt.Sprintf("level %d without deflate", l)] = identifyData{DeflateLevel: l}
	}
	for _, ms := range []int{-1, 0, 999, 1000, 30000, 60000, 120000, 120001, 900000, 900001} {
		ids[fmt.Sprintf("msg_timeout %d", ms)] = identifyData{MsgTimeout: ms}
	}
	for _, n := range []int{-2, -1, 0, 1, 63, 64, 100, 16384, 65536, 65537} {
		ids[fmt.Sprintf("output_buffer_size %d", n)] = identifyData{OutputBufferSize: n}
	}
	for _, ms := range []int{-2, -1, 0, 1, 24, 25, 100, 250, 1000, 30000, 30001} {
		ids[fmt.Sprintf("output_buffer_timeout %d", ms)] = identifyData{OutputBufferTimeout: ms}
	}
	for _, r := range []int32{-1, 0, 1, 50, 99, 100} {
		ids[fmt.Sprintf("sample_rate %d", r)] = identifyData{SampleRate: r}
	}
	for _, ms := range []int{-2, -1, 0, 999, 1000, 60000, 60001} {
		ids[fmt.Sprintf("heartbeat_interval %d", ms)] = identifyData{HeartbeatInterval: ms}
	}
	return ids
}

// TestPromiseAgainstNsqd checks promise against a real nsqd v1.3.0 run
// with various settings: for every IDENTIFY nsqd accepts, its answer is
// exactly what the proxy would have promised the client.
func TestPromiseAgainstNsqd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nsqd")
	}
	configs := []struct {
		name  string
		flags []string
		want  func(*upstreamSettings) // changes from defaultSettings
	}{
		{"defaults", nil, nil},
		{"max-deflate-level 5", []string{"--max-deflate-level=5"},
			func(s *upstreamSettings) { s.MaxDeflateLevel = 5 }},
		{"max-deflate-level 9", []string{"--max-deflate-level=9"},
			func(s *upstreamSettings) { s.MaxDeflateLevel = 9 }},
		{"no compression", []string{"--snappy=false", "--deflate=false"},
			func(s *upstreamSettings) { s.SnappyEnabled, s.DeflateEnabled = false, false }},
		{"deflate only, level 1", []string{"--snappy=false", "--max-deflate-level=1"},
			func(s *upstreamSettings) { s.SnappyEnabled, s.MaxDeflateLevel = false, 1 }},
		{"timeouts and limits", []string{"--max-msg-timeout=2m", "--msg-timeout=30s",
			"--output-buffer-timeout=100ms", "--max-output-buffer-size=32768",
			"--min-output-buffer-timeout=50ms", "--max-output-buffer-timeout=10s",
			"--max-rdy-count=100", "--max-heartbeat-interval=10s"},
			func(s *upstreamSettings) {
				s.MaxMsgTimeout, s.MsgTimeout, s.OutputBufferTimeout = 120000, 30000, 100
				s.MaxRdyCount = 100
			}},
		{"auth", []string{"--auth-http-address=127.0.0.1:1"},
			func(s *upstreamSettings) { s.AuthRequired = true }},
	}
	ids := clientIdentifies()
	for _, cfg := range configs {
		t.Run(cfg.name, func(t *testing.T) {
			t.Parallel()
			n, err := nsqdtest.Start(filepath.Join(t.TempDir(), "nsqd"), cfg.flags...)
			require.NoError(t, err)
			t.Cleanup(n.Stop)

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			up := newUpstream(n.TCPAddr, 5*time.Second, zaptest.NewLogger(t))
			settings, watch, err := up.learn(ctx)
			require.NoError(t, err)
			watch.Close()
			want := defaultSettings()
			if cfg.want != nil {
				cfg.want(&want)
			}
			require.Equal(t, &want, settings)

			accepted := 0
			for name, id := range ids {
				id.FeatureNegotiation, id.TLSv1 = true, true
				promised := settings.promise(&id)

				// Replay as conn.go does: the same struct, tls_v1 false.
				replay := id
				replay.TLSv1 = false
				body, err := json.Marshal(&replay)
				require.NoError(t, err)
				conn, frameType, answer, err := up.identify(ctx, body)
				require.NoError(t, err, name)
				conn.Close()
				if frameType != frameTypeResponse {
					require.Equal(t, frameTypeError, frameType, "%s: %q", name, answer)
					t.Logf("%s: nsqd refused: %s", name, answer)
					continue
				}
				accepted++
				assert.NoError(t, checkAnswer(promised, answer), "%s: %s", name, body)
				assert.Equal(t, string(answer), string(nsqdAnswer(t, promised, false)),
					"%s: the promise is byte for byte nsqd's answer but tls_v1", name)
			}
			assert.Greater(t, accepted, len(ids)/2, "nsqd accepted too few bodies to tell")
		})
	}
}
