# autopod — build, test, demo and install.
#
#   sudo make demo    set up this machine and run the demo
#   sudo make test    set up this machine and run every test tier
#
# Setup (make deps) installs apt packages, CRIU >= 4.1 and Go modules; it is
# idempotent and takes seconds once done.

VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.1.0-dev)
PREFIX   ?= /usr
DESTDIR  ?=
GO       ?= go
GOFLAGS  ?= -trimpath
LDFLAGS  := -X main.version=$(VERSION)
BIN      := bin

.PHONY: all build deps test test-unit test-root test-system test-units fuzz bench demo install clean

all: build

build:
	CGO_ENABLED=0 $(GO) build $(GOFLAGS) -ldflags '$(LDFLAGS)' -o $(BIN)/autopod ./cmd/autopod
	CGO_ENABLED=0 $(GO) build $(GOFLAGS) -ldflags '$(LDFLAGS)' -o $(BIN)/autopodctl ./cmd/autopodctl

deps:
	scripts/deps.sh

# Every tier, with a timing line per tier and a summary; CI runs this.
test: deps build
	scripts/test.sh all

test-unit:
	scripts/test.sh unit
test-root: build
	scripts/test.sh root
test-system: build
	scripts/test.sh system
test-units:
	scripts/test.sh units

fuzz:
	$(GO) test -run XXX -fuzz FuzzParseSpec -fuzztime 30s ./pods/

bench: deps build
	scripts/bench.sh

demo: deps build
	scripts/demo.sh

install: build
	install -D -m 0755 $(BIN)/autopod $(DESTDIR)$(PREFIX)/bin/autopod
	install -D -m 0755 $(BIN)/autopodctl $(DESTDIR)$(PREFIX)/bin/autopodctl
	install -D -m 0644 units/autopod.service $(DESTDIR)$(PREFIX)/lib/systemd/system/autopod.service
	install -D -m 0644 units/autopod.socket $(DESTDIR)$(PREFIX)/lib/systemd/system/autopod.socket
	install -D -m 0644 units/org.autopod.Agent1.conf $(DESTDIR)$(PREFIX)/share/dbus-1/system.d/org.autopod.Agent1.conf
	install -D -m 0644 units/org.autopod.Agent1.service $(DESTDIR)$(PREFIX)/share/dbus-1/system-services/org.autopod.Agent1.service
	install -D -m 0644 packaging/etc/autopod/autopod.toml $(DESTDIR)/etc/autopod/autopod.toml
	install -d -m 0755 $(DESTDIR)/etc/autopod/pods

clean:
	rm -rf $(BIN)
