package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/nsqio/go-nsq"
	"github.com/nsqtls/nsqtls-proxy/internal/testpki"
)

// nsqLog is where go-nsq's warnings and errors go, indented under the
// demo's own lines.
var nsqLog = log.New(os.Stdout, "           go-nsq: ", 0)

// nsqConfig is a go-nsq config that upgrades to TLS, trusts the demo CA
// and presents leaf, if any.
func (d *demo) nsqConfig(leaf *testpki.Leaf, cache tls.ClientSessionCache) *nsq.Config {
	tc := &tls.Config{RootCAs: d.pki.ca.Pool(), ClientSessionCache: cache}
	if leaf != nil {
		tc.Certificates = []tls.Certificate{leaf.TLSCertificate()}
	}
	cfg := nsq.NewConfig()
	cfg.TlsV1 = true
	cfg.TlsConfig = tc
	cfg.DialTimeout = 3 * time.Second
	return cfg
}

func (d *demo) moveMessages() error {
	bodies := makeBodies(numMessages)
	col := newCollector(bodies)
	producer, err := d.readyProducer()
	if err != nil {
		return err
	}
	defer producer.Stop()
	consumers, err := d.startConsumers(col)
	defer stopConsumers(consumers)
	if err != nil {
		return err
	}
	if err := publish(producer, bodies); err != nil {
		return err
	}
	d.step("published %d messages as orders-writer (MPUB, %d per batch); consuming ...",
		len(bodies), batchSize)
	if !col.wait(30 * time.Second) {
		d.step("gave up waiting after 30s")
	}
	snappy, err := d.checkNSQDClients()
	if err != nil {
		return err
	}
	d.traffic = col.result()
	d.traffic.snappyAtNSQD = snappy
	d.step("received %d distinct messages (plain consumer %d, snappy consumer %d)",
		d.traffic.received, d.traffic.perConsumer["plain"], d.traffic.perConsumer["snappy"])
	return nil
}

// makeBodies makes n distinct bodies; each carries a checksum over a
// per-run salt so that an altered body cannot pass for another.
func makeBodies(n int) []string {
	salt := rand.Text()
	bodies := make([]string, n)
	for i := range bodies {
		sum := sha256.Sum256(fmt.Appendf(nil, "%s/%d", salt, i))
		bodies[i] = fmt.Sprintf(`{"order":%d,"sku":"SKU-%04d","qty":%d,"check":"%x"}`,
			i, i%977, 1+i%9, sum[:8])
	}
	return bodies
}

// readyProducer connects the orders-writer producer, retrying for a few
// seconds while the proxy still refuses clients (it does until it has
// learned nsqd's settings).
func (d *demo) readyProducer() (*nsq.Producer, error) {
	p, err := nsq.NewProducer(d.proxy.addr, d.nsqConfig(d.pki.writer, nil))
	if err != nil {
		return nil, err
	}
	p.SetLogger(nsqLog, nsq.LogLevelWarning)
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := p.Ping()
		if err == nil {
			d.step("orders-writer connected through the proxy")
			return p, nil
		}
		if time.Now().After(deadline) || d.proxy.exited() {
			p.Stop()
			return nil, fmt.Errorf("cannot connect through the proxy: %w", err)
		}
		d.readyRetries++
		time.Sleep(100 * time.Millisecond)
	}
}

// startConsumers starts two orders-reader consumers on one channel, one
// plain and one with snappy. They share a TLS session cache, so the second
// resumes the first one's session.
func (d *demo) startConsumers(col *collector) ([]*nsq.Consumer, error) {
	cache := tls.NewLRUClientSessionCache(4)
	var consumers []*nsq.Consumer
	for _, name := range []string{"plain", "snappy"} {
		cfg := d.nsqConfig(d.pki.reader, cache)
		cfg.Snappy = name == "snappy"
		cfg.MaxInFlight = 250
		c, err := nsq.NewConsumer(topic, channel, cfg)
		if err != nil {
			return consumers, err
		}
		c.SetLogger(nsqLog, nsq.LogLevelWarning)
		c.AddHandler(col.handler(name))
		consumers = append(consumers, c)
		if err := c.ConnectToNSQD(d.proxy.addr); err != nil {
			return consumers, fmt.Errorf("%s consumer: %w", name, err)
		}
	}
	d.step("2 consumers (orders-reader; plain and snappy) subscribed to %s/%s", topic, channel)
	return consumers, nil
}

func stopConsumers(consumers []*nsq.Consumer) {
	for _, c := range consumers {
		// Stopping makes go-nsq warn "there are 0 connections left alive".
		c.SetLoggerLevel(nsq.LogLevelError)
		c.Stop()
	}
	for _, c := range consumers {
		select {
		case <-c.StopChan:
		case <-time.After(10 * time.Second):
		}
	}
}

func publish(p *nsq.Producer, bodies []string) error {
	for i := 0; i < len(bodies); i += batchSize {
		batch := make([][]byte, 0, batchSize)
		for _, b := range bodies[i:min(i+batchSize, len(bodies))] {
			batch = append(batch, []byte(b))
		}
		if err := p.MultiPublish(topic, batch); err != nil {
			return fmt.Errorf("MPUB: %w", err)
		}
	}
	return nil
}

// checkNSQDClients asks nsqd how it sees the consumers: through the proxy
// they are plaintext to nsqd, and the snappy one's compression reached
// nsqd unchanged.
func (d *demo) checkNSQDClients() (snappy int, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stats, err := d.nsqd.Stats(ctx)
	if err != nil {
		return 0, err
	}
	who := d.upstreamClients()
	for _, t := range stats.Topics {
		for _, ch := range t.Channels {
			for _, c := range ch.Clients {
				d.step("nsqd sees consumer %s (%s): tls=%v snappy=%v deflate=%v",
					c.RemoteAddress, who(c.RemoteAddress), c.TLS, c.Snappy, c.Deflate)
				if c.Snappy {
					snappy++
				}
			}
		}
	}
	return snappy, nil
}

// upstreamClients tells, for an address nsqd sees, which client the proxy
// connected from there, by the audit log's upstream_local_addr.
func (d *demo) upstreamClients() func(addr string) string {
	byAddr := map[string]string{}
	events, _ := readAudit(d.proxy.auditPath)
	for _, ev := range events {
		if ev.is("handshake", "ok") {
			byAddr[ev.str("upstream_local_addr")] = ev.str("client_cn")
		}
	}
	return func(addr string) string {
		if cn, ok := byAddr[addr]; ok {
			return "audit: " + cn + " via the proxy"
		}
		return "not in the audit log"
	}
}
