package main

import "fmt"

// okHandshakes is how many clients the proxy should let in: the
// orders-writer producer and the two orders-reader consumers.
const okHandshakes = 3

func (d *demo) checkTraffic() {
	t := d.traffic
	if t.lost > 0 || t.duplicated > 0 || t.altered > 0 {
		d.problem("messages: lost %d, duplicated %d, altered %d", t.lost, t.duplicated, t.altered)
	}
	if t.snappyAtNSQD != 1 {
		d.problem("nsqd saw %d snappy consumers, want 1", t.snappyAtNSQD)
	}
}

func (d *demo) checkAudit(a auditSummary) {
	if a.ok != okHandshakes {
		d.problem("audit log: %d successful handshakes, want %d", a.ok, okHandshakes)
	}
	if a.closed != a.ok {
		d.problem("audit log: %d close events for %d connections", a.closed, a.ok)
	}
	expected := map[string]bool{}
	for _, r := range d.refusals {
		expected[r.reason] = true
		if a.failed[r.reason] != 1 {
			d.problem("audit log: %d handshakes failed with %s, want 1 (client with %s)",
				a.failed[r.reason], r.reason, r.name)
		}
	}
	for reason, n := range a.failed {
		// The proxy refuses clients with upstream_unavailable until it
		// has learned nsqd's settings; the first connection retried.
		if reason == "upstream_unavailable" && n <= d.readyRetries {
			continue
		}
		if !expected[reason] {
			d.problem("audit log: %d unexpected handshake failures with %s", n, reason)
		}
	}
}

func (d *demo) printSummary(a auditSummary) {
	d.checkTraffic()
	t := d.traffic
	through := 0
	for _, r := range d.refusals {
		if r.err == nil {
			through++
		}
	}
	fmt.Println("\nsummary")
	fmt.Printf("  messages sent: %d  received: %d  (lost %d, duplicated %d, altered %d)\n",
		t.sent, t.received, t.lost, t.duplicated, t.altered)
	fmt.Printf("  consumers: plain got %d, snappy got %d; nsqd saw %d snappy consumer(s)\n",
		t.perConsumer["plain"], t.perConsumer["snappy"], t.snappyAtNSQD)
	fmt.Printf("  handshakes ok: %d  failed: %d (%s)  resumed: %d\n",
		a.ok, a.failedTotal(), a.failedBreakdown(), a.resumed)
	fmt.Printf("  connections closed (audited): %d\n", a.closed)
	fmt.Printf("  refused clients that got through: %d of %d\n", through, len(d.refusals))
	fmt.Printf("  proxy exit status: %d\n", d.exitCode)
}
