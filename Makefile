GO     ?= go
NSQJS  := proxy/testdata/nsqjs

.PHONY: all build test demo node-deps fuzz clean

all: build

build:
	$(GO) build -o bin/nsqtls-proxy ./cmd/nsqtls-proxy

# nsqd v1.3.0 is a tool dependency in go.mod; tests and the demo find it
# with `go tool -n nsqd`. This target only puts a copy in bin/ for manual use.
bin/nsqd:
	$(GO) build -o bin/nsqd github.com/nsqio/nsq/apps/nsqd

node-deps: $(NSQJS)/node_modules/.installed

$(NSQJS)/node_modules/.installed: $(NSQJS)/package.json $(NSQJS)/package-lock.json
	cd $(NSQJS) && npm ci --no-audit --no-fund
	touch $@

test: node-deps
	$(GO) vet ./...
	$(GO) test -race -count=1 ./...

demo:
	$(GO) run ./internal/demo

# Fuzz the plaintext NSQ opening for FUZZTIME (the seed corpus also runs in `make test`).
FUZZTIME ?= 60s
fuzz:
	$(GO) test ./proxy -run '^$$' -fuzz FuzzReadOpening -fuzztime $(FUZZTIME)

clean:
	rm -rf bin $(NSQJS)/node_modules
