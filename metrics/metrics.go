// Package metrics holds the proxy's Prometheus metrics, on a registry of
// their own, and serves them over HTTP.
package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the proxy's metrics. Label values come from fixed
// vocabularies (outcomes and reasons), never from client input.
type Metrics struct {
	Registry *prometheus.Registry

	// Handshakes counts openings by outcome (ok, failed) and reason.
	Handshakes *prometheus.CounterVec
	// RevokedDisconnects counts open connections closed for revocation.
	RevokedDisconnects prometheus.Counter
	// OCSPSoftFails counts clients let in because OCSP gave no answer.
	OCSPSoftFails prometheus.Counter
}

// New makes the metrics, with Go runtime and process collectors.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		Registry: reg,
		Handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "nsqtls_handshakes_total",
			Help: "Client openings by outcome and reason (the audit log's words).",
		}, []string{"outcome", "reason"}),
		RevokedDisconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nsqtls_revoked_disconnects_total",
			Help: "Open connections closed because their certificate was revoked.",
		}),
		OCSPSoftFails: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "nsqtls_ocsp_soft_fails_total",
			Help: "Clients admitted without an OCSP answer under --ocsp=soft-fail.",
		}),
	}
	reg.MustRegister(m.Handshakes, m.RevokedDisconnects, m.OCSPSoftFails,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// CounterFunc registers a counter read from f, for counts kept elsewhere.
func (m *Metrics) CounterFunc(name, help string, f func() float64) {
	m.Registry.MustRegister(prometheus.NewCounterFunc(
		prometheus.CounterOpts{Name: name, Help: help}, f))
}

// GaugeFunc registers a gauge read from f.
func (m *Metrics) GaugeFunc(name, help string, f func() float64) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(
		prometheus.GaugeOpts{Name: name, Help: help}, f))
}

// Serve serves /metrics on ln until ctx ends.
func (m *Metrics) Serve(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	stop := context.AfterFunc(ctx, func() {
		shutdown, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	})
	defer stop()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
