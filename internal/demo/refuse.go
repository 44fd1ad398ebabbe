package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
)

// refusal is a client the proxy must turn away.
type refusal struct {
	name   string
	leaf   *testpki.Leaf
	reason string // the audit reason expected
	err    error  // what the client got; nil means it got through
}

func (d *demo) showRefusals() error {
	d.refusals = []refusal{
		{name: "no client certificate", reason: "no_client_cert"},
		{name: "CN=orders-writer from another CA", leaf: d.pki.stranger, reason: "unknown_authority"},
	}
	d.step("clients the proxy must refuse:")
	for i := range d.refusals {
		r := &d.refusals[i]
		r.err = d.tryPublish(r.leaf)
		if r.err == nil {
			d.problem("client with %s published through the proxy", r.name)
			fmt.Printf("           %-34s GOT THROUGH\n", r.name+":")
			continue
		}
		fmt.Printf("           %-34s refused: %v\n", r.name+":", r.err)
	}
	return d.checkTopicCount()
}

func (d *demo) tryPublish(leaf *testpki.Leaf) error {
	cfg := d.nsqConfig(leaf, nil)
	if leaf != nil {
		// Go's TLS client sends no certificate at all when its own is not
		// from one of the CAs the server asks for; then the proxy could
		// only say no_client_cert. Many other clients send theirs anyway;
		// do the same, so the proxy has a certificate to reject.
		tc := leaf.TLSCertificate()
		cfg.TlsConfig.Certificates = nil
		cfg.TlsConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &tc, nil
		}
	}
	p, err := nsq.NewProducer(d.proxy.addr, cfg)
	if err != nil {
		return err
	}
	defer p.Stop()
	// go-nsq would log the same error again; the demo prints it once.
	p.SetLogger(nil, nsq.LogLevelWarning)
	return p.Publish(topic, []byte("this message must never reach nsqd"))
}

// checkTopicCount makes sure nsqd holds exactly the messages the demo
// published, so no refused client slipped one in.
func (d *demo) checkTopicCount() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stats, err := d.nsqd.Stats(ctx)
	if err != nil {
		return err
	}
	for _, t := range stats.Topics {
		if t.TopicName == topic && t.MessageCount != numMessages {
			d.problem("nsqd's topic %s holds %d messages, want %d", topic, t.MessageCount, numMessages)
		}
	}
	return nil
}

// stopAll stops the proxy with SIGTERM, checks that it drained and exited
// 0, then stops nsqd. The clients are already gone.
func (d *demo) stopAll() error {
	d.step("stopping nsqtls-proxy with SIGTERM ...")
	code, err := d.proxy.terminate(15 * time.Second)
	d.exitCode = code
	if err != nil {
		d.problem("%v", err)
	}
	if code != 0 {
		d.problem("proxy exit status %d, want 0", code)
	}
	d.step("proxy exited with status %d", code)
	d.step("stopping nsqd ...")
	d.nsqd.Stop()
	return nil
}
