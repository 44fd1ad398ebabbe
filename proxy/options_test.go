package proxy

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// parse runs the command line args through a fresh Options.
func parse(t *testing.T, args ...string) (*Options, error) {
	t.Helper()
	o := NewOptions()
	fs := o.FlagSet("nsqtls-proxy")
	fs.SetOutput(io.Discard)
	return o, o.ParseArgs(fs, args)
}

func writeConfig(t *testing.T, doc string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "nsqtls-proxy.toml")
	require.NoError(t, os.WriteFile(path, []byte(doc), 0o600))
	return path
}

func TestOptionsDefaults(t *testing.T) {
	o, err := parse(t)
	require.NoError(t, err)
	assert.Equal(t, &Options{
		TCPAddress:           "0.0.0.0:4150",
		TLSMinVersion:        "tls1.2",
		TLSClientAuthPolicy:  "require-verify",
		TLSSessionResumption: true,
		TLSHandshakeTimeout:  10 * time.Second,
		UpstreamDialTimeout:  5 * time.Second,
		DrainTimeout:         10 * time.Second,
		LogLevel:             "info",
		OCSP:                 "soft-fail",
		OCSPTimeout:          2 * time.Second,
	}, o)

	// The help text shows the same defaults.
	fs := NewOptions().FlagSet("nsqtls-proxy")
	for name, def := range map[string]string{
		"config": "", "tcp-address": "0.0.0.0:4150", "upstream-tcp-address": "",
		"unsafe-upstream": "false", "tls-cert": "", "tls-key": "", "tls-root-ca-file": "",
		"tls-min-version": "tls1.2", "tls-client-auth-policy": "require-verify",
		"tls-session-resumption": "true", "tls-handshake-timeout": "10s",
		"upstream-dial-timeout": "5s", "drain-timeout": "10s", "audit-log": "",
		"log-level": "info", "crl-file": "", "crl-stale-grace": "0s",
		"ocsp": "soft-fail", "ocsp-responder-url": "", "ocsp-timeout": "2s",
		"crl-url": "", "crl-fetch-distribution-points": "false", "metrics-address": "",
	} {
		f := fs.Lookup(name)
		if assert.NotNil(t, f, name) {
			assert.Equal(t, def, f.DefValue, name)
			assert.NotEmpty(t, f.Usage, name)
		}
	}
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	assert.Equal(t, 23, n, "a new flag needs a default test")
}

func TestOptionsFlags(t *testing.T) {
	o, err := parse(t, "--tcp-address=127.0.0.1:4151", "--upstream-tcp-address", "[::1]:4150",
		"--unsafe-upstream", "--tls-cert=c.pem", "--tls-key=k.pem", "--tls-root-ca-file=ca.pem",
		"--tls-min-version=tls1.3", "--tls-client-auth-policy=require-verify",
		"--tls-session-resumption=false", "--tls-handshake-timeout=3s",
		"--upstream-dial-timeout=250ms", "--drain-timeout=0", "--audit-log=-",
		"-log-level", "debug", "--crl-file=a.crl", "--crl-file", "b.crl",
		"--crl-stale-grace=1h", "--ocsp=hard-fail", "--ocsp-responder-url=http://127.0.0.1:8888",
		"--ocsp-timeout=1s")
	require.NoError(t, err)
	assert.Equal(t, &Options{
		TCPAddress:           "127.0.0.1:4151",
		UpstreamTCPAddress:   "[::1]:4150",
		UnsafeUpstream:       true,
		TLSCert:              "c.pem",
		TLSKey:               "k.pem",
		TLSRootCAFile:        "ca.pem",
		TLSMinVersion:        "tls1.3",
		TLSClientAuthPolicy:  "require-verify",
		TLSSessionResumption: false,
		TLSHandshakeTimeout:  3 * time.Second,
		UpstreamDialTimeout:  250 * time.Millisecond,
		DrainTimeout:         0,
		AuditLog:             "-",
		LogLevel:             "debug",
		CRLFiles:             stringList{"a.crl", "b.crl"},
		CRLStaleGrace:        time.Hour,
		OCSP:                 "hard-fail",
		OCSPResponderURL:     "http://127.0.0.1:8888",
		OCSPTimeout:          time.Second,
	}, o)
}

func TestOptionsFlagErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
		err  string
	}{
		{"unknown flag", []string{"--tls-ca=x"}, "flag provided but not defined"},
		{"positional argument", []string{"--tls-cert=c.pem", "extra"},
			`unexpected argument "extra"`},
		{"bad duration", []string{"--drain-timeout=10"}, "drain-timeout"},
		{"bad bool", []string{"--unsafe-upstream=maybe"}, "unsafe-upstream"},
		{"missing config file", []string{"--config", "/nonexistent/nsqtls-proxy.toml"},
			"no such file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(t, tc.args...)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.err)
		})
	}
}

const sampleConfig = `
# nsqtls-proxy.toml
tcp_address = "127.0.0.1:14150"
upstream_tcp_address = "/run/nsqd.sock"
tls_cert = "/etc/nsqtls/server.pem"
tls_key = "/etc/nsqtls/server-key.pem"
tls_root_ca_file = "/etc/nsqtls/clients-ca.pem"
tls_min_version = "tls1.3"
tls_session_resumption = false
tls_handshake_timeout = "4s"
upstream_dial_timeout = "1s"
drain_timeout = "30s"
audit-log = "/var/log/nsqtls/audit.log"
log_level = "warn"
crl_file = ["/etc/nsqtls/root.crl", "/etc/nsqtls/intermediate.crl"]
ocsp = "off"
`

func TestOptionsConfigFile(t *testing.T) {
	path := writeConfig(t, sampleConfig)
	want := &Options{
		TCPAddress:           "127.0.0.1:14150",
		UpstreamTCPAddress:   "/run/nsqd.sock",
		TLSCert:              "/etc/nsqtls/server.pem",
		TLSKey:               "/etc/nsqtls/server-key.pem",
		TLSRootCAFile:        "/etc/nsqtls/clients-ca.pem",
		TLSMinVersion:        "tls1.3",
		TLSClientAuthPolicy:  "require-verify",
		TLSSessionResumption: false,
		TLSHandshakeTimeout:  4 * time.Second,
		UpstreamDialTimeout:  time.Second,
		DrainTimeout:         30 * time.Second,
		AuditLog:             "/var/log/nsqtls/audit.log",
		LogLevel:             "warn",
		CRLFiles:             stringList{"/etc/nsqtls/root.crl", "/etc/nsqtls/intermediate.crl"},
		OCSP:                 "off",
		OCSPTimeout:          2 * time.Second,
	}

	t.Run("file sets values", func(t *testing.T) {
		o, err := parse(t, "--config", path)
		require.NoError(t, err)
		assert.Equal(t, want, o)
		assert.NoError(t, o.Validate())
	})

	for _, args := range [][]string{
		{"--config", path, "--log-level=error", "--tls-session-resumption=true",
			"--tls-min-version", "tls1.2"},
		{"--log-level=error", "--tls-session-resumption=true", "--tls-min-version", "tls1.2",
			"--config=" + path},
	} {
		t.Run("command line wins "+strings.Join(args[:1], ""), func(t *testing.T) {
			o, err := parse(t, args...)
			require.NoError(t, err)
			w := *want
			w.LogLevel, w.TLSSessionResumption, w.TLSMinVersion = "error", true, "tls1.2"
			assert.Equal(t, &w, o)
		})
	}

	t.Run("command line wins even when it says the default", func(t *testing.T) {
		o, err := parse(t, "--config", path, "--tcp-address=0.0.0.0:4150",
			"--tls-handshake-timeout=10s")
		require.NoError(t, err)
		assert.Equal(t, "0.0.0.0:4150", o.TCPAddress)
		assert.Equal(t, 10*time.Second, o.TLSHandshakeTimeout)
		assert.Equal(t, "/run/nsqd.sock", o.UpstreamTCPAddress, "the rest comes from the file")
	})

	t.Run("scalars of other TOML types", func(t *testing.T) {
		o, err := parse(t, "--config", writeConfig(t,
			"unsafe_upstream = true\ntls_cert = \"c\"\ndrain_timeout = \"1m30s\"\n"))
		require.NoError(t, err)
		assert.True(t, o.UnsafeUpstream)
		assert.Equal(t, "c", o.TLSCert)
		assert.Equal(t, 90*time.Second, o.DrainTimeout)
	})
}

func TestOptionsConfigErrors(t *testing.T) {
	cases := []struct {
		name string
		doc  string
		err  string
	}{
		{"unknown key", `tls_ca_file = "ca.pem"`, `unknown setting "tls_ca_file"`},
		{"nsqd setting the proxy lacks", `max_rdy_count = 10`, `unknown setting "max_rdy_count"`},
		{"config names no other file", `config = "other.toml"`, `unknown setting "config"`},
		{"array for a single-valued flag", `tls_cert = ["a.pem", "b.pem"]`,
			"tls_cert: takes a single value, not an array"},
		{"array for a bool", `unsafe_upstream = [true]`, "takes a single value"},
		{"table", "[tls]\ncert = \"a.pem\"", `unknown setting "tls"`},
		{"inline table for a flag", `tls_cert = {path = "a.pem"}`, "tls_cert: unsupported value"},
		{"datetime", `tls_cert = 2024-01-01T00:00:00Z`, "tls_cert: unsupported value type"},
		{"duration without unit", `drain_timeout = 10`, "drain_timeout"},
		{"bad duration", `drain_timeout = "soon"`, "drain_timeout"},
		{"bad bool", `unsafe_upstream = "maybe"`, "unsafe_upstream"},
		{"TOML syntax", `tls_cert = `, "config file"},
		{"duplicate key", "tls_cert = \"a\"\ntls_cert = \"b\"", "config file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := NewOptions()
			fs := o.FlagSet("nsqtls-proxy")
			err := applyConfig(fs, tc.doc)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.err)
			assert.True(t, strings.HasPrefix(err.Error(), "options: config file"), "%v", err)

			// The same through ParseArgs and a file.
			_, err = parse(t, "--config", writeConfig(t, tc.doc))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.err)
		})
	}

	t.Run("unknown key is an error even when a flag sets it", func(t *testing.T) {
		_, err := parse(t, "--tls-cert=c", "--config", writeConfig(t, "tls_cert = \"c\"\nx = 1"))
		require.Error(t, err)
		assert.Contains(t, err.Error(), `unknown setting "x"`)
	})
}

// listValue is a repeatable flag, for the TOML array rule.
type listValue []string

func (l *listValue) String() string     { return strings.Join(*l, ",") }
func (l *listValue) Set(s string) error { *l = append(*l, s); return nil }
func (l *listValue) Repeatable()        {}

func TestOptionsConfigRepeatable(t *testing.T) {
	o := NewOptions()
	fs := o.FlagSet("nsqtls-proxy")
	var list listValue
	fs.Var(&list, "allow", "repeatable")
	require.NoError(t, applyConfig(fs, `allow = ["a", "b", 3, true]`))
	assert.Equal(t, listValue{"a", "b", "3", "true"}, list)

	err := applyConfig(fs, `allow = [["nested"]]`)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "allow: unsupported value type")
}

// validOptions passes Validate; each case breaks one thing.
func validOptions() *Options {
	o := NewOptions()
	o.TLSCert, o.TLSKey, o.TLSRootCAFile = "server.pem", "server-key.pem", "ca.pem"
	o.UpstreamTCPAddress = "127.0.0.1:4150"
	return o
}

func TestOptionsValidate(t *testing.T) {
	cases := []struct {
		name   string
		change func(*Options)
		err    []string // "" when valid
	}{
		{"valid", func(*Options) {}, nil},

		{"auth policy requireverify", func(o *Options) { o.TLSClientAuthPolicy = "requireverify" },
			[]string{`--tls-client-auth-policy "requireverify" is not valid`,
				`write "require-verify"`}},
		{"auth policy require", func(o *Options) { o.TLSClientAuthPolicy = "require" },
			[]string{`write "require-verify"`}},
		{"auth policy empty", func(o *Options) { o.TLSClientAuthPolicy = "" },
			[]string{`write "require-verify"`}},
		{"auth policy in upper case", func(o *Options) {
			o.TLSClientAuthPolicy = "REQUIRE-VERIFY"
		}, []string{`write "require-verify"`}},

		{"tls1.3", func(o *Options) { o.TLSMinVersion = "tls1.3" }, nil},
		{"min version tls1.1", func(o *Options) { o.TLSMinVersion = "tls1.1" },
			[]string{`--tls-min-version "tls1.1" is not valid`, "write tls1.2 or tls1.3"}},
		{"min version 1.2", func(o *Options) { o.TLSMinVersion = "1.2" },
			[]string{"--tls-min-version", "tls1.2 or tls1.3"}},
		{"min version TLS1.2", func(o *Options) { o.TLSMinVersion = "TLS1.2" },
			[]string{"--tls-min-version"}},
		{"min version empty", func(o *Options) { o.TLSMinVersion = "" },
			[]string{"--tls-min-version"}},

		{"upstream 10.0.0.1", func(o *Options) { o.UpstreamTCPAddress = "10.0.0.1:4150" },
			[]string{`--upstream-tcp-address "10.0.0.1:4150" is not a loopback`,
				"--unsafe-upstream"}},
		{"upstream host name", func(o *Options) { o.UpstreamTCPAddress = "nsqd.example:4150" },
			[]string{`"nsqd.example:4150" is not a loopback`, "--unsafe-upstream"}},
		{"upstream localhost", func(o *Options) { o.UpstreamTCPAddress = "localhost:4150" },
			[]string{"is not a loopback"}},
		{"upstream any address", func(o *Options) { o.UpstreamTCPAddress = "0.0.0.0:4150" },
			[]string{"is not a loopback"}},
		{"upstream public IPv6", func(o *Options) { o.UpstreamTCPAddress = "[2001:db8::1]:4150" },
			[]string{"is not a loopback"}},
		{"upstream IPv4-mapped private", func(o *Options) {
			o.UpstreamTCPAddress = "[::ffff:10.0.0.1]:4150"
		}, []string{"is not a loopback"}},
		{"upstream 10.0.0.1 with --unsafe-upstream", func(o *Options) {
			o.UpstreamTCPAddress, o.UnsafeUpstream = "10.0.0.1:4150", true
		}, nil},
		{"upstream host name with --unsafe-upstream", func(o *Options) {
			o.UpstreamTCPAddress, o.UnsafeUpstream = "nsqd.example:4150", true
		}, nil},
		{"upstream 127.0.0.1", func(o *Options) { o.UpstreamTCPAddress = "127.0.0.1:4150" }, nil},
		{"upstream 127.1.2.3", func(o *Options) { o.UpstreamTCPAddress = "127.1.2.3:4150" }, nil},
		{"upstream [::1]", func(o *Options) { o.UpstreamTCPAddress = "[::1]:4150" }, nil},
		{"upstream unix socket", func(o *Options) {
			o.UpstreamTCPAddress = "/run/nsqd.sock"
		}, nil},
		{"upstream relative unix socket", func(o *Options) {
			o.UpstreamTCPAddress = "./nsqd.sock"
		}, nil},
		{"upstream without port or slash", func(o *Options) {
			o.UpstreamTCPAddress = "10.0.0.1"
		}, []string{`"10.0.0.1" has no port`, "./nsqd.sock"}},

		{"no cert", func(o *Options) { o.TLSCert = "" }, []string{"--tls-cert"}},
		{"no key", func(o *Options) { o.TLSKey = "" }, []string{"--tls-key"}},
		{"no root CA", func(o *Options) { o.TLSRootCAFile = "" }, []string{"--tls-root-ca-file"}},
		{"no upstream", func(o *Options) { o.UpstreamTCPAddress = "" },
			[]string{"--upstream-tcp-address is required"}},
		{"no listen address", func(o *Options) { o.TCPAddress = "" },
			[]string{"--tcp-address is required"}},
		{"zero handshake timeout", func(o *Options) { o.TLSHandshakeTimeout = 0 },
			[]string{"timeouts must be positive"}},
		{"negative dial timeout", func(o *Options) { o.UpstreamDialTimeout = -time.Second },
			[]string{"timeouts must be positive"}},
		{"negative drain timeout", func(o *Options) { o.DrainTimeout = -1 },
			[]string{"timeouts must be positive"}},
		{"zero drain timeout", func(o *Options) { o.DrainTimeout = 0 }, nil},
		{"bad log level", func(o *Options) { o.LogLevel = "verbose" },
			[]string{`--log-level "verbose"`, "debug, info, warn or error"}},
		{"log level error", func(o *Options) { o.LogLevel = "error" }, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := validOptions()
			tc.change(o)
			err := o.Validate()
			if tc.err == nil {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			for _, want := range tc.err {
				assert.Contains(t, err.Error(), want)
			}
		})
	}
}

func TestOptionsValidateFromArgs(t *testing.T) {
	base := []string{"--tls-cert=c", "--tls-key=k", "--tls-root-ca-file=ca"}
	cases := []struct {
		name string
		args []string
		err  string
	}{
		{"loopback", []string{"--upstream-tcp-address=127.0.0.1:4150"}, ""},
		{"requireverify", []string{"--upstream-tcp-address=127.0.0.1:4150",
			"--tls-client-auth-policy=requireverify"}, `write "require-verify"`},
		{"remote nsqd", []string{"--upstream-tcp-address=10.0.0.1:4150"}, "--unsafe-upstream"},
		{"remote nsqd, unsafe", []string{"--upstream-tcp-address=10.0.0.1:4150",
			"--unsafe-upstream"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parse(t, append(append([]string(nil), base...), tc.args...)...)
			require.NoError(t, err)
			err = o.Validate()
			if tc.err == "" {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.err)
		})
	}
}
