# Strongroom developer entry points. `make help` lists them.
# Every target first installs missing build dependencies (Debian 12, as root).

CARGO      ?= cargo
STATE_DIR  ?= $(CURDIR)/dev-state
LISTEN     ?= 127.0.0.1:8443
DENY_VER   := 0.20.2
# cargo-fuzz, pinned so CI reproduces it; the targets are in fuzz/.
FUZZ_VER   := 0.13.2
FUZZ_SECONDS ?= 120
FUZZ_SMOKE_SECONDS ?= 20
# inferno turns a perf profile into a flame graph (make flamegraph).
INFERNO_VER := 0.12.3
FLAME      ?= create1
# A stock SQLCipher 4 client (built on OpenSSL, from PyPI) for the
# disaster-recovery test: it must read our files given the exported raw key.
STOCK_VENV := $(CURDIR)/target/stock-sqlcipher
STOCK_PY   := $(STOCK_VENV)/bin/python
# Independent implementations the tests check us against: pyotp (RFC 6238),
# standardwebhooks (the Standard Webhooks receivers' library).
TEST_VENV  := $(CURDIR)/target/test-py
TEST_PY    := $(TEST_VENV)/bin/python

.PHONY: help deps build run test lint deny bench bench-http bench-backup flamegraph package test-package clean fuzz-deps fuzz fuzz-smoke

help:
	@echo "make run     build and run strongroomd in dev mode (STATE_DIR=$(STATE_DIR), LISTEN=$(LISTEN))"
	@echo "make test    every check and test: fmt, clippy, cargo deny, cargo test"
	@echo "make build   release binaries in target/release/"
	@echo "make package       target/package/strongroom_<ver>-1_amd64.deb and strongroom-<ver>.x86_64.rpm"
	@echo "make test-package  lint both packages, score the unit, boot the .deb in a Debian 12 container"
	@echo "make fuzz    every fuzz target for FUZZ_SECONDS (default $(FUZZ_SECONDS)) each; make fuzz-smoke: $(FUZZ_SMOKE_SECONDS) s each"
	@echo "make bench   durable commits/s through the group-commit writer vs a plain loop (BENCH_DIR=disk to measure)"
	@echo "make bench-http  64 HTTPS clients against strongroomd, and against nginx (TLS 1.3, static JSON) as the ceiling"
	@echo "make bench-backup  100 firms, ~1 GB: full and incremental snapshots against cp, restore, API p99 during snapshots"
	@echo "make flamegraph    target/flamegraph-FLAME.svg: the daemon profiled under one bench-http workload (FLAME=$(FLAME); needs perf)"

deps:
	@bash packaging/build-deps.sh

build: deps
	$(CARGO) build --release --locked --bins

run: build
	./target/release/strongroomd --dev --state-dir "$(STATE_DIR)" --listen "$(LISTEN)"

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked --features test-clock -- -D warnings

deny: deps
	@command -v cargo-deny >/dev/null 2>&1 || $(CARGO) install --locked cargo-deny@$(DENY_VER)
	$(CARGO) deny --locked check bans licenses sources

$(STOCK_PY):
	python3 -m venv "$(STOCK_VENV)"
	"$(STOCK_VENV)/bin/pip" install --quiet --disable-pip-version-check "sqlcipher3-binary==0.6.0"

# The stamp names the package set: a changed set installs again.
TEST_PY_DEPS := $(TEST_VENV)/.deps-pyotp2.9.0-schemathesis4.32.5-cryptography44.0.2-standardwebhooks1.1.0

$(TEST_PY):
	python3 -m venv "$(TEST_VENV)"

$(TEST_PY_DEPS): $(TEST_PY)
	"$(TEST_VENV)/bin/pip" install --quiet --disable-pip-version-check "pyotp==2.9.0" "schemathesis==4.32.5" "cryptography==44.0.2" "standardwebhooks==1.1.0"
	touch "$@"

# The console's browser test: playwright-core and axe-core at the versions
# tests/console/package-lock.json pins, driving Debian's chromium (build-deps).
CONSOLE_DEPS := tests/console/node_modules/.package-lock.json

$(CONSOLE_DEPS): tests/console/package.json tests/console/package-lock.json
	cd tests/console && npm ci --no-audit --no-fund
	touch "$@"

test: lint deny $(STOCK_PY) $(TEST_PY_DEPS) $(CONSOLE_DEPS)
	STRONGROOM_STOCK_SQLCIPHER_PY="$(STOCK_PY)" STRONGROOM_REQUIRE_STOCK_SQLCIPHER=1 \
		STRONGROOM_TEST_PY="$(TEST_PY)" STRONGROOM_REQUIRE_PROMTOOL=1 \
		STRONGROOM_TEST_NODE="$$(command -v node)" STRONGROOM_TEST_CHROMIUM=/usr/bin/chromium \
		STRONGROOM_REQUIRE_CONSOLE=1 \
		$(CARGO) test --locked --features test-clock

package: build
	bash packaging/build-packages.sh

test-package: build
	bash packaging/test-package.sh

# Fuzzing needs no nightly toolchain: without a sanitizer, cargo-fuzz passes
# no unstable flags, so the machine's stable toolchain builds the targets.
fuzz-deps: deps
	@cargo fuzz --version 2>/dev/null | grep -qF "$(FUZZ_VER)" || \
		$(CARGO) install --locked cargo-fuzz@$(FUZZ_VER)

fuzz: fuzz-deps
	CARGO="$(CARGO)" bash fuzz/run.sh $(FUZZ_SECONDS)

fuzz-smoke: fuzz-deps
	CARGO="$(CARGO)" bash fuzz/run.sh $(FUZZ_SMOKE_SECONDS)

BENCH_DIR ?= $(CURDIR)/target/bench-tmp

bench: build
	./target/release/strongroom-bench --dir "$(BENCH_DIR)"

# nginx from Debian is the ceiling; the bench starts its own instance on a
# loopback port. A package install may start the distribution's nginx: stop it.
bench-http: build
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || { \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx && \
		{ systemctl disable --now nginx 2>/dev/null || true; }; }
	./target/release/strongroom-httpbench --dir "$(BENCH_DIR)/http"

# Backups: 100 firms, about 1 GB; full and incremental snapshots against cp,
# restore, and create latency while snapshots run (BENCH_DIR=disk to measure).
bench-backup: build
	./target/release/strongroom-httpbench --dir "$(BENCH_DIR)/backup" --only backup --seconds 10

# A flame graph of strongroomd under one bench-http workload (FLAME=create1,
# createN, get, ...): perf samples the daemon for 4 s of the measured window,
# inferno draws target/flamegraph-$(FLAME).svg. Run it on an idle machine.
flamegraph: build
	@command -v perf >/dev/null 2>&1 || { echo "make flamegraph needs perf: apt-get install linux-perf" >&2; exit 1; }
	@inferno-flamegraph --version 2>/dev/null | grep -qF "$(INFERNO_VER)" || \
		$(CARGO) install --locked inferno@$(INFERNO_VER)
	rm -rf "$(BENCH_DIR)/flame"
	./target/release/strongroom-httpbench --dir "$(BENCH_DIR)/flame" --only $(FLAME) --seconds 15 & \
	bench=$$!; \
	until pid=$$(pgrep -n -x strongroomd); do sleep 0.2; done; \
	sleep 6; \
	perf record -e cpu-clock -F 997 --call-graph dwarf,16384 -p $$pid -o target/flame.data -- sleep 4; \
	wait $$bench
	perf script -i target/flame.data 2>/dev/null | inferno-collapse-perf | \
		inferno-flamegraph --title "strongroomd under bench-http --only $(FLAME)" > target/flamegraph-$(FLAME).svg
	@echo "target/flamegraph-$(FLAME).svg"

clean:
	$(CARGO) clean
