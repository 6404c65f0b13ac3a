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
	for f in FuzzParseAptHook FuzzParseDnfLines FuzzParseDpkgStatus; do \
		$(GO) test -run XXX -fuzz "^$$f\$$" -fuzztime 20s ./hooks/ || exit 1; done

bench: deps build
	scripts/bench.sh

demo: deps build
	scripts/demo.sh

# ---------------------------------------------------------------------------
# Installing and packaging (docs/packaging.md). One `make install` feeds both
# debian/rules and rpm/autopod.spec; they set the paths their distribution
# wants. The units and the D-Bus activation file name /usr/bin/autopod, so
# packages keep PREFIX=/usr.
UNITDIR     ?= $(PREFIX)/lib/systemd/system
PRESETDIR   ?= $(PREFIX)/lib/systemd/system-preset
TMPFILESDIR ?= $(PREFIX)/lib/tmpfiles.d
DATADIR     ?= $(PREFIX)/share
SYSCONFDIR  ?= /etc
COMPLETIONS := packaging/usr/share/bash-completion/completions
# The package managers' hooks: apt's for the .deb, dnf's plugin for the .rpm
# (debian/rules and rpm/autopod.spec turn the other off).
APTCONFDIR   ?= $(SYSCONFDIR)/apt/apt.conf.d
DNFPLUGINDIR ?= $(PREFIX)/lib/python3/dist-packages/dnf-plugins
DNFCONFDIR   ?= $(SYSCONFDIR)/dnf/plugins
APT_HOOKS    ?= yes
DNF_PLUGIN   ?= yes

install: build
	install -D -m 0755 $(BIN)/autopod $(DESTDIR)$(PREFIX)/bin/autopod
	install -D -m 0755 $(BIN)/autopodctl $(DESTDIR)$(PREFIX)/bin/autopodctl
	install -D -m 0644 -t $(DESTDIR)$(UNITDIR) units/autopod.service units/autopod.socket units/autopod-updates.path
	install -D -m 0644 -t $(DESTDIR)$(PRESETDIR) packaging/usr/lib/systemd/system-preset/80-autopod.preset
	install -D -m 0644 -t $(DESTDIR)$(TMPFILESDIR) packaging/usr/lib/tmpfiles.d/autopod.conf
	install -D -m 0644 -t $(DESTDIR)$(DATADIR)/dbus-1/system.d units/org.autopod.Agent1.conf
	install -D -m 0644 -t $(DESTDIR)$(DATADIR)/dbus-1/system-services units/org.autopod.Agent1.service
	install -D -m 0644 -t $(DESTDIR)$(DATADIR)/man/man5 packaging/usr/share/man/man5/autopod.toml.5 \
		packaging/usr/share/man/man5/autopod-pod.toml.5
	install -D -m 0644 -t $(DESTDIR)$(DATADIR)/man/man8 packaging/usr/share/man/man8/autopod.8 \
		packaging/usr/share/man/man8/autopodctl.8
	install -D -m 0644 -t $(DESTDIR)$(DATADIR)/bash-completion/completions $(COMPLETIONS)/autopod $(COMPLETIONS)/autopodctl
	install -D -m 0644 packaging/etc/autopod/autopod.toml $(DESTDIR)$(SYSCONFDIR)/autopod/autopod.toml
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/autopod/pods
ifeq ($(APT_HOOKS),yes)
	install -D -m 0644 -t $(DESTDIR)$(APTCONFDIR) packaging/etc/apt/apt.conf.d/99autopod \
		packaging/etc/apt/apt.conf.d/99autopod-unattended-upgrades
endif
ifeq ($(DNF_PLUGIN),yes)
	install -D -m 0644 -t $(DESTDIR)$(DNFPLUGINDIR) packaging/usr/lib/python3/dist-packages/dnf-plugins/autopod.py
	install -D -m 0644 -t $(DESTDIR)$(DNFCONFDIR) packaging/etc/dnf/plugins/autopod.conf
endif

# make deb / make rpm build in a staged copy of the tree under $(PKGBUILD) and
# leave autopod_VERSION_ARCH.deb and autopod-VERSION-RELEASE.ARCH.rpm in
# $(PKGOUT). VERSION is debian/changelog's first entry for both packages.
PKGBUILD   ?= build/pkg
PKGOUT     ?= build/packages
PKGVERSION := $(shell awk -F'[()]' 'NR == 1 { print $$2 }' debian/changelog)
# Go >= 1.26 outside the package manager (/usr/local/go): build with the
# profile that drops the golang-go build dependency (debian/control).
DEB_PROFILES ?= $(shell dpkg --compare-versions "$$(dpkg-query -W -f='$${Version}' golang-go 2>/dev/null)" \
	ge 2:1.26~ 2>/dev/null || echo pkg.autopod.local-go)
DEB_BUILDFLAGS ?= -b -us -uc
# Debian's rpm database does not know dpkg's packages, so BuildRequires cannot
# be checked there.
RPMBUILDFLAGS ?= $(shell rpm -q rpm >/dev/null 2>&1 || echo --nodeps)

# stage-source DIR: copy what a clean checkout has (tracked files, plus new
# files that are not ignored, so uncommitted work builds as it will once
# committed; outside a git checkout, everything but build output) and vendor
# the Go modules, from the module cache (`make deps` fills it; the network is
# used only for modules missing there). The package builds then run with
# GOPROXY=off GOFLAGS=-mod=vendor and need no network.
define stage-source
	rm -rf $(1) && mkdir -p $(1)
	if [ "$$(git rev-parse --show-toplevel 2>/dev/null)" = "$(CURDIR)" ]; then \
		git ls-files -z --cached --others --exclude-standard | \
			tar --null --no-recursion --ignore-failed-read -T - -cf -; \
	else \
		tar --exclude=./$(BIN) --exclude=./build --exclude=./vendor --exclude=./.git -cf - .; \
	fi | tar -xf - -C $(1)
	cd $(1) && GOFLAGS=-mod=mod $(GO) mod vendor
endef

.PHONY: deb rpm test-packaging

deb:
	$(call stage-source,$(PKGBUILD)/deb/autopod-$(PKGVERSION))
	rm -f $(PKGBUILD)/deb/autopod_*
	cd $(PKGBUILD)/deb/autopod-$(PKGVERSION) && GOCACHE="$$($(GO) env GOCACHE)" \
		dpkg-buildpackage $(DEB_BUILDFLAGS) $(if $(DEB_PROFILES),-P$(DEB_PROFILES))
	mkdir -p $(PKGOUT)
	cp $(PKGBUILD)/deb/autopod_$(PKGVERSION)_*.deb $(PKGOUT)/

rpm:
	$(call stage-source,$(PKGBUILD)/rpm/src/autopod-$(PKGVERSION))
	rm -rf $(PKGBUILD)/rpm/SOURCES $(PKGBUILD)/rpm/RPMS $(PKGBUILD)/rpm/BUILD $(PKGBUILD)/rpm/BUILDROOT
	mkdir -p $(PKGBUILD)/rpm/SOURCES $(PKGOUT)
	tar -C $(PKGBUILD)/rpm/src -czf $(PKGBUILD)/rpm/SOURCES/autopod-$(PKGVERSION).tar.gz autopod-$(PKGVERSION)
	rpmbuild -bb $(RPMBUILDFLAGS) --define '_topdir $(abspath $(PKGBUILD)/rpm)' \
		--define 'autopod_version $(PKGVERSION)' $(PKGBUILD)/rpm/src/autopod-$(PKGVERSION)/rpm/autopod.spec
	cp $(PKGBUILD)/rpm/RPMS/*/autopod-$(PKGVERSION)-*.rpm $(PKGOUT)/

# Builds both packages from a clean copy of the tree, runs lintian, checks the
# .rpm with rpm -qp and rpm --root, and installs, upgrades, removes and purges
# the .deb in a Debian root booted with systemd-nspawn. Needs root.
test-packaging:
	$(GO) test -count=1 -tags roottest -timeout 20m -v ./test/packaging/

clean:
	rm -rf $(BIN)

# End-to-end tier (test/vm): two qemu guests (Debian trixie, systemd, their
# own kernel) install the .deb built from this checkout; a redis pod moves
# between them with each strategy, then unattended-upgrades installs a newer
# kernel on one, which autopod evacuates, reboots and brings back.
# scripts/vm-image.sh and scripts/vm-kernel-repo.sh cache the guest image
# and the kernel packages in /var/cache/autopod-test/vm. Needs root, the
# Debian archive on the first run, and about 12 minutes (TCG). The phase and
# pause table goes to the log and to $(E2E_REPORT).
E2E_REPORT ?= build/e2e-report.md
.PHONY: e2e
e2e: deps
	AUTOPOD_E2E_REPORT=$(abspath $(E2E_REPORT)) $(GO) test -tags e2e -count=1 -timeout 45m -v ./test/vm/
