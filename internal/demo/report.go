package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
)

// auditEvent is one line of the proxy's audit log.
type auditEvent map[string]any

func (e auditEvent) str(key string) string {
	switch v := e[key].(type) {
	case nil:
		return ""
	case string:
		return v
	case float64:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprint(v)
	}
}

func (e auditEvent) is(event, outcome string) bool {
	return e.str("event") == event && e.str("outcome") == outcome
}

func readAudit(path string) ([]auditEvent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	defer f.Close()
	var events []auditEvent
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ev auditEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, fmt.Errorf("audit log line %q: %w", sc.Text(), err)
		}
		events = append(events, ev)
	}
	return events, sc.Err()
}

func (d *demo) report() error {
	events, err := readAudit(d.proxy.auditPath)
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(d.proxy.auditPath)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	fmt.Printf("\naudit log %s, as written (JSON lines):\n%s", d.proxy.auditPath, raw)
	fmt.Printf("\nthe same %d lines, condensed:\n", len(events))
	for _, ev := range events {
		fmt.Println("  " + auditLine(ev))
	}
	d.printProxyWarnings()
	a := summarize(events)
	d.checkAudit(a)
	d.printSummary(a)
	return nil
}

// auditLine is one audit event on one line, the fields that tell the
// story first.
func auditLine(ev auditEvent) string {
	cn := ev.str("client_cn")
	if cn == "" {
		cn = "-"
	}
	head := fmt.Sprintf("#%-2s %-9s %-6s %-17s cn=%-14s remote=%s", ev.str("conn_id"),
		ev.str("event"), ev.str("outcome"), ev.str("reason"), cn, ev.str("remote_addr"))
	var tail []string
	if v := ev.str("tls_version"); v != "" {
		tail = append(tail, v, "resumed="+ev.str("resumed"))
	}
	if v := ev.str("upstream_local_addr"); v != "" {
		tail = append(tail, "upstream_local="+v)
	}
	if ev.str("event") == "close" {
		tail = append(tail, fmt.Sprintf("in=%sB out=%sB %sms", ev.str("bytes_from_client"),
			ev.str("bytes_to_client"), ev.str("duration_ms")))
	}
	if ev.is("handshake", "failed") {
		tail = append(tail, "detail="+ev.str("detail"))
	}
	return strings.TrimSpace(head + "  " + strings.Join(tail, " "))
}

// printProxyWarnings shows the proxy's own WARN and ERROR log lines, if
// any; a clean run has none.
func (d *demo) printProxyWarnings() {
	var lines []string
	for _, l := range strings.Split(d.proxy.log(), "\n") {
		// zap's console lines: time, level, caller, message, fields.
		f := strings.SplitN(l, "\t", 3)
		if len(f) > 1 && (strings.EqualFold(f[1], "warn") || strings.EqualFold(f[1], "error")) {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return
	}
	fmt.Printf("\nproxy warnings and errors (%s):\n", d.proxy.logPath)
	for _, l := range lines {
		fmt.Println("  " + l)
	}
}

// auditSummary counts the audit events.
type auditSummary struct {
	ok, resumed, closed int
	failed              map[string]int // by reason
	failedCN            map[string]string
}

func summarize(events []auditEvent) auditSummary {
	a := auditSummary{failed: map[string]int{}, failedCN: map[string]string{}}
	for _, ev := range events {
		switch {
		case ev.is("handshake", "ok"):
			a.ok++
			if ev["resumed"] == true {
				a.resumed++
			}
		case ev.is("handshake", "failed"):
			a.failed[ev.str("reason")]++
			a.failedCN[ev.str("reason")] = ev.str("client_cn")
		case ev.str("event") == "close":
			a.closed++
		}
	}
	return a
}

func (a auditSummary) failedTotal() int {
	n := 0
	for _, c := range a.failed {
		n += c
	}
	return n
}

func (a auditSummary) failedBreakdown() string {
	reasons := make([]string, 0, len(a.failed))
	for r := range a.failed {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	parts := make([]string, len(reasons))
	for i, r := range reasons {
		parts[i] = fmt.Sprintf("%s: %d", r, a.failed[r])
	}
	return strings.Join(parts, ", ")
}
