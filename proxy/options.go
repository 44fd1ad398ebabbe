package proxy

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/nsqtls/nsqtls-proxy/revocation"
)

// Options holds every setting of the proxy. Flag names follow nsqd's where
// nsqd has the same setting; the TOML config file uses the same names with
// '_' for '-'.
type Options struct {
	TCPAddress         string
	UpstreamTCPAddress string
	UnsafeUpstream     bool

	TLSCert              string
	TLSKey               string
	TLSRootCAFile        string
	TLSMinVersion        string
	TLSClientAuthPolicy  string
	TLSSessionResumption bool
	TLSHandshakeTimeout  time.Duration
	UpstreamDialTimeout  time.Duration
	DrainTimeout         time.Duration
	AuditLog             string
	LogLevel             string
	MetricsAddress       string

	CRLFiles                   stringList
	CRLURLs                    stringList
	CRLFetchDistributionPoints bool
	CRLStaleGrace              time.Duration

	OCSP             string
	OCSPResponderURL string
	OCSPTimeout      time.Duration
}

// NewOptions returns the defaults.
func NewOptions() *Options {
	return &Options{
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
	}
}

// FlagSet returns a flag set bound to o. The "config" flag names a TOML
// file; ParseArgs reads it.
func (o *Options) FlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.String("config", "", "path to a TOML config file (same names as the flags, '_' for '-')")

	fs.StringVar(&o.TCPAddress, "tcp-address", o.TCPAddress,
		"<addr>:<port> to listen on for NSQ clients")
	fs.StringVar(&o.UpstreamTCPAddress, "upstream-tcp-address", o.UpstreamTCPAddress,
		"nsqd's TCP address: 127.0.0.1:PORT, [::1]:PORT or a unix socket path")
	fs.BoolVar(&o.UnsafeUpstream, "unsafe-upstream", o.UnsafeUpstream,
		"UNSAFE: allow a non-loopback --upstream-tcp-address (traffic to nsqd is plaintext)")

	fs.StringVar(&o.TLSCert, "tls-cert", o.TLSCert,
		"path to the server certificate (PEM, intermediates after the leaf)")
	fs.StringVar(&o.TLSKey, "tls-key", o.TLSKey, "path to the server private key (PEM)")
	fs.StringVar(&o.TLSRootCAFile, "tls-root-ca-file", o.TLSRootCAFile,
		"path to the PEM bundle of CAs that client certificates must chain to")
	fs.StringVar(&o.TLSMinVersion, "tls-min-version", o.TLSMinVersion,
		"minimum TLS version: tls1.2 or tls1.3")
	fs.StringVar(&o.TLSClientAuthPolicy, "tls-client-auth-policy", o.TLSClientAuthPolicy,
		"client certificate policy; only require-verify is supported")
	fs.BoolVar(&o.TLSSessionResumption, "tls-session-resumption", o.TLSSessionResumption,
		"allow TLS session resumption (1.2 tickets, 1.3 PSK)")
	fs.DurationVar(&o.TLSHandshakeTimeout, "tls-handshake-timeout", o.TLSHandshakeTimeout,
		"deadline for the whole opening: magic, IDENTIFY and TLS handshake")
	fs.DurationVar(&o.UpstreamDialTimeout, "upstream-dial-timeout", o.UpstreamDialTimeout,
		"deadline for connecting to nsqd and reading its IDENTIFY answer")
	fs.DurationVar(&o.DrainTimeout, "drain-timeout", o.DrainTimeout,
		"on SIGTERM/SIGINT, how long open connections may finish before they are closed")
	fs.StringVar(&o.AuditLog, "audit-log", o.AuditLog,
		"path of the audit log (JSON lines); empty or - for stdout")
	fs.StringVar(&o.LogLevel, "log-level", o.LogLevel, "debug, info, warn or error")
	fs.StringVar(&o.MetricsAddress, "metrics-address", o.MetricsAddress,
		"<addr>:<port> to serve Prometheus metrics on at /metrics; empty for none")

	fs.Var(&o.CRLFiles, "crl-file",
		"CRL file (PEM or DER) issued by a CA of --tls-root-ca-file; repeatable; "+
			"re-read when it changes and on SIGHUP")
	fs.Var(&o.CRLURLs, "crl-url",
		"CRL URL (http or https) issued by a CA of --tls-root-ca-file; repeatable; "+
			"refreshed before its nextUpdate")
	fs.BoolVar(&o.CRLFetchDistributionPoints, "crl-fetch-distribution-points",
		o.CRLFetchDistributionPoints,
		"fetch the CRL named by a client certificate's distribution point when its issuer "+
			"has no CRL from --crl-file or --crl-url")
	fs.DurationVar(&o.CRLStaleGrace, "crl-stale-grace", o.CRLStaleGrace,
		"how long past its nextUpdate a CRL is still used; after that its issuer's "+
			"certificates are refused")
	fs.StringVar(&o.OCSP, "ocsp", o.OCSP,
		"OCSP checks of client certificates that name a responder (or with "+
			"--ocsp-responder-url): off, soft-fail (no answer lets the client in, logged) "+
			"or hard-fail (no answer refuses)")
	fs.StringVar(&o.OCSPResponderURL, "ocsp-responder-url", o.OCSPResponderURL,
		"OCSP responder to ask instead of the one each certificate names")
	fs.DurationVar(&o.OCSPTimeout, "ocsp-timeout", o.OCSPTimeout,
		"how long an OCSP lookup may take")
	return fs
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }
func (l *stringList) Repeatable()        {}

// ParseArgs parses command-line arguments into o, then fills what the
// command line left unset from the file named by --config. It does not
// validate; New does.
func (o *Options) ParseArgs(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("options: unexpected argument %q", fs.Arg(0))
	}
	if path := fs.Lookup("config").Value.String(); path != "" {
		if err := applyConfigFile(fs, path); err != nil {
			return err
		}
	}
	return nil
}

// repeatable marks a flag.Value that may be given several times; a TOML
// array sets it once per element.
type repeatable interface {
	flag.Value
	Repeatable()
}

// applyConfigFile sets every flag that the command line left unset from
// the TOML file at path.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("options: %w", err)
	}
	return applyConfig(fs, string(data))
}

func applyConfig(fs *flag.FlagSet, doc string) error {
	var values map[string]any
	if _, err := toml.Decode(doc, &values); err != nil {
		return fmt.Errorf("options: config file: %w", err)
	}
	onCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })

	for key, v := range values {
		name := strings.ReplaceAll(key, "_", "-")
		f := fs.Lookup(name)
		if f == nil || name == "config" {
			return fmt.Errorf("options: config file: unknown setting %q", key)
		}
		if onCommandLine[name] {
			continue
		}
		if err := setFromTOML(f, v); err != nil {
			return fmt.Errorf("options: config file: %s: %w", key, err)
		}
	}
	return nil
}

func setFromTOML(f *flag.Flag, v any) error {
	list, isList := v.([]any)
	if !isList {
		s, err := tomlScalar(v)
		if err != nil {
			return err
		}
		return f.Value.Set(s)
	}
	if _, ok := f.Value.(repeatable); !ok {
		return errors.New("takes a single value, not an array")
	}
	for _, item := range list {
		s, err := tomlScalar(item)
		if err != nil {
			return err
		}
		if err := f.Value.Set(s); err != nil {
			return err
		}
	}
	return nil
}

func tomlScalar(v any) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case bool:
		return strconv.FormatBool(v), nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64), nil
	default:
		return "", fmt.Errorf("unsupported value type %T", v)
	}
}

// Validate checks the options and says what to write instead when one is
// wrong.
func (o *Options) Validate() error {
	if o.TLSCert == "" || o.TLSKey == "" || o.TLSRootCAFile == "" {
		return errors.New("options: --tls-cert, --tls-key and --tls-root-ca-file are required")
	}
	if o.UpstreamTCPAddress == "" {
		return errors.New("options: --upstream-tcp-address is required (nsqd's loopback address)")
	}
	if o.TCPAddress == "" {
		return errors.New("options: --tcp-address is required")
	}
	if _, err := o.minTLSVersion(); err != nil {
		return err
	}
	if o.TLSClientAuthPolicy != "require-verify" {
		return fmt.Errorf("options: --tls-client-auth-policy %q is not valid; write \"require-verify\" "+
			"(the only policy: every client must present a certificate that chains to "+
			"--tls-root-ca-file)", o.TLSClientAuthPolicy)
	}
	if o.TLSHandshakeTimeout <= 0 || o.UpstreamDialTimeout <= 0 || o.DrainTimeout < 0 ||
		o.CRLStaleGrace < 0 {
		return errors.New("options: timeouts must be positive")
	}
	if _, err := revocation.ParseOCSPMode(o.OCSP); err != nil {
		return fmt.Errorf("options: --ocsp: %w", err)
	}
	if o.OCSPTimeout <= 0 {
		return errors.New("options: timeouts must be positive")
	}
	if _, err := parseLogLevel(o.LogLevel); err != nil {
		return err
	}
	if upstreamNetwork(o.UpstreamTCPAddress) == "unix" &&
		!strings.Contains(o.UpstreamTCPAddress, "/") {
		return fmt.Errorf("options: --upstream-tcp-address %q has no port; give HOST:PORT, "+
			"or a unix socket path containing a '/' (e.g. ./nsqd.sock)", o.UpstreamTCPAddress)
	}
	if !o.UnsafeUpstream && !isLoopbackAddr(o.UpstreamTCPAddress) {
		return fmt.Errorf("options: --upstream-tcp-address %q is not a loopback address or unix "+
			"socket; traffic to nsqd is plaintext, so give 127.0.0.1:PORT, [::1]:PORT or a socket "+
			"path, or add --unsafe-upstream if you really mean it", o.UpstreamTCPAddress)
	}
	return nil
}

func (o *Options) minTLSVersion() (uint16, error) {
	switch o.TLSMinVersion {
	case "tls1.2":
		return tls.VersionTLS12, nil
	case "tls1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("options: --tls-min-version %q is not valid; write tls1.2 or tls1.3",
		o.TLSMinVersion)
}

// upstreamNetwork tells "unix" for a socket path and "tcp" for host:port,
// as nsqd itself decides for --tcp-address.
func upstreamNetwork(addr string) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return "tcp"
	}
	return "unix"
}

// isLoopbackAddr accepts unix socket paths and IP literals on loopback.
// Host names are refused: what they resolve to can change.
func isLoopbackAddr(addr string) bool {
	if upstreamNetwork(addr) == "unix" {
		return true
	}
	ap, err := netip.ParseAddrPort(addr)
	return err == nil && ap.Addr().IsLoopback()
}
