# thinserve: set up a Debian 12 machine (as root), run the server, run the tests.
#   make run    install what is missing, then run the server on its embedded defaults
#   make test   install what is missing, then run the whole test suite
#   make test-load  the integration tests again, with a CPU hog on both cores
#   make lint   ruff check + ruff format --check + mypy
#   make bench  the benchmarks
#   make deps   only the Debian packages (touches nothing when all are there)
#   make deb    the Debian package, dist/thinserve_VERSION_amd64.deb (packaging/README.md)
#   make deb-check  build it, install it here, check it, purge it again

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# What the server and the integration tests drive, plus python3-venv for
# Debian's own python3, libvirt-dev/pkg-config to build libvirt-python, and
# npm (installed only when missing: Node.js builds often carry their own) fetches
# the pinned noVNC release for the browser terminal; stress-ng loads the CPUs
# for make test-load.  The default desktop's session: IceWM, xterm and PCManFM
# (docs/desktops.md).
DEBIAN_PACKAGES := \
	tigervnc-standalone-server tigervnc-tools tigervnc-viewer \
	xvfb xterm xdotool xclip x11-apps x11-utils x11-xserver-utils imagemagick \
	icewm pcmanfm \
	fonts-dejavu-core \
	qemu-system-x86 qemu-utils busybox-static cpio linux-image-amd64 \
	libvirt-dev pkg-config libvirt-daemon libvirt-daemon-driver-qemu \
	libvirt-clients libvirt-daemon-system \
	avahi-daemon avahi-utils libnss-mdns dbus iproute2 \
	chromium remmina remmina-plugin-vnc python3-venv stress-ng \
	postgresql
NOVNC := clients/web/node_modules/@novnc/novnc/core/rfb.js
PICO := clients/dashboard/node_modules/@picocss/pico/css/pico.classless.min.css

# Never ask anything: no terminal, keep existing config files, wait for a busy dpkg lock.
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -q -y \
	-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
	-o DPkg::Lock::Timeout=600

.PHONY: help deps venv novnc desktop-account run test test-load lint bench deb deb-check

help:
	@sed -n '2,10s/^# \{0,1\}//p' Makefile

deps:
	@missing=$$(for package in $(DEBIAN_PACKAGES); do \
		dpkg-query -W -f='$${db:Status-Abbrev}' "$$package" 2>/dev/null | grep -q '^ii' \
			|| echo "$$package"; \
	done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	echo "make deps: installing" $$missing; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "make deps: run as root to install them (apt-get install $$missing)" >&2; exit 1; \
	fi; \
	$(APT_GET) update </dev/null && \
	$(APT_GET) install --no-install-recommends $$missing </dev/null

venv: $(STAMP)

$(BIN)/python: | deps
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "make: $(PYTHON) is older than 3.11; set PYTHON=python3.11 or newer" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)

# Re-install only when the package metadata changed.
$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The browser terminal's noVNC, pinned in clients/web/package-lock.json, and the
# dashboard's Pico CSS, pinned in clients/dashboard/package-lock.json.
novnc: $(NOVNC) $(PICO)

$(NOVNC): clients/web/package.json clients/web/package-lock.json | deps
	command -v npm >/dev/null || $(APT_GET) install --no-install-recommends npm </dev/null
	npm ci --prefix clients/web --no-audit --no-fund
	touch $@

$(PICO): clients/dashboard/package.json clients/dashboard/package-lock.json | deps
	command -v npm >/dev/null || $(APT_GET) install --no-install-recommends npm </dev/null
	npm ci --prefix clients/dashboard --no-audit --no-fund
	touch $@

# The unprivileged account the default desktop runs as when thinserve runs as
# root (thinserve refuses to run a desktop as root).  As anyone else the
# desktop runs as that user, and there is nothing to make.
DESKTOP_ACCOUNT := thinserve-desktop
desktop-account:
	@if [ "$$(id -u)" = 0 ] && ! getent passwd $(DESKTOP_ACCOUNT) >/dev/null; then \
		echo "make: creating the account $(DESKTOP_ACCOUNT) for the default desktop"; \
		useradd --system --create-home --home-dir /var/lib/$(DESKTOP_ACCOUNT) \
			--shell /bin/bash $(DESKTOP_ACCOUNT); \
	fi

run: deps $(STAMP) $(NOVNC) $(PICO) desktop-account
	$(BIN)/thinserve serve --defaults --state-dir .state

# pytest takes its options from setup.cfg; add more with PYTEST_ARGS="-k name".
test: deps $(STAMP) $(NOVNC) $(PICO) desktop-account
	@status=0; $(BIN)/pytest $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$status

# The integration tests while stress-ng keeps LOAD_CPUS cores busy: a test that
# waits a fixed time where it should wait for a condition fails here first.
# The hog is stopped however pytest ends (pass, fail, Ctrl-C); if make itself is
# killed, the hog's own timeout ends it.  Run a subset with LOAD_TESTS=some/path
# or PYTEST_ARGS="-k name".
LOAD_TESTS ?= tests/integration
LOAD_CPUS ?= 2
test-load: deps $(STAMP) $(NOVNC) $(PICO) desktop-account
	@stress-ng --cpu $(LOAD_CPUS) --timeout 6h --quiet & hog=$$!; \
	trap 'kill $$hog 2>/dev/null; wait $$hog 2>/dev/null' EXIT; \
	status=0; $(BIN)/pytest $(LOAD_TESTS) $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test-load: pytest collected no tests" >&2; fi; \
	exit $$status

# mypy reads its settings (strict on protocols/) from pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: deps $(STAMP)
	$(BIN)/python -m bench

# The Debian package (packaging/build-deb): a virtualenv for /opt/thinserve,
# the unit, /etc/thinserve, the man page.  deb-check runs lintian on it, then
# installs it on this machine, checks it as an admin would (doctor, the unit,
# accounts, the service started as its unit says) and purges it again.
deb: deps $(NOVNC) $(PICO)
	packaging/build-deb

deb-check: deb $(STAMP)
	@command -v lintian >/dev/null || $(APT_GET) install --no-install-recommends lintian </dev/null
	lintian --fail-on error,warning dist/thinserve_*_amd64.deb
	$(BIN)/python packaging/check-installed dist/thinserve_*_amd64.deb
