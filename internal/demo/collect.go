package main

import (
	"sync"
	"time"

	"github.com/nsqio/go-nsq"
)

// collector counts what the consumers receive against what was sent.
type collector struct {
	mu          sync.Mutex
	sent        map[string]bool
	got         map[string]int
	altered     int // bodies that were never sent
	perConsumer map[string]int
	all         chan struct{} // closed once every sent body has arrived
}

// trafficResult is what the consumers received, and what nsqd saw.
type trafficResult struct {
	sent, received            int
	lost, duplicated, altered int
	perConsumer               map[string]int
	snappyAtNSQD              int
}

func newCollector(bodies []string) *collector {
	c := &collector{
		sent:        make(map[string]bool, len(bodies)),
		got:         make(map[string]int, len(bodies)),
		perConsumer: map[string]int{},
		all:         make(chan struct{}),
	}
	for _, b := range bodies {
		c.sent[b] = true
	}
	return c
}

func (c *collector) handler(consumer string) nsq.HandlerFunc {
	return func(m *nsq.Message) error {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.perConsumer[consumer]++
		body := string(m.Body)
		if !c.sent[body] {
			c.altered++
			return nil
		}
		c.got[body]++
		if c.got[body] == 1 && len(c.got) == len(c.sent) {
			close(c.all)
		}
		return nil
	}
}

// wait waits for every body, then a little longer so that a duplicate
// right behind the last message would still be counted.
func (c *collector) wait(timeout time.Duration) bool {
	select {
	case <-c.all:
		time.Sleep(200 * time.Millisecond)
		return true
	case <-time.After(timeout):
		return false
	}
}

func (c *collector) result() *trafficResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := &trafficResult{
		sent:        len(c.sent),
		received:    len(c.got),
		lost:        len(c.sent) - len(c.got),
		altered:     c.altered,
		perConsumer: map[string]int{},
	}
	for _, n := range c.got {
		r.duplicated += n - 1
	}
	for k, v := range c.perConsumer {
		r.perConsumer[k] = v
	}
	return r
}
