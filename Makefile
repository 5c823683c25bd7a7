# Strongroom developer entry points. `make help` lists them.
# Every target first installs missing build dependencies (Debian 12, as root).

CARGO      ?= cargo
STATE_DIR  ?= $(CURDIR)/dev-state
LISTEN     ?= 127.0.0.1:8443
DENY_VER   := 0.20.2

.PHONY: help deps build run test lint deny clean

help:
	@echo "make run     build and run strongroomd in dev mode (STATE_DIR=$(STATE_DIR), LISTEN=$(LISTEN))"
	@echo "make test    every check and test: fmt, clippy, cargo deny, cargo test"
	@echo "make build   release binaries in target/release/"

deps:
	@bash packaging/build-deps.sh

build: deps
	$(CARGO) build --release --locked --bins

run: build
	./target/release/strongroomd --dev --state-dir "$(STATE_DIR)" --listen "$(LISTEN)"

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

deny: deps
	@command -v cargo-deny >/dev/null 2>&1 || $(CARGO) install --locked cargo-deny@$(DENY_VER)
	$(CARGO) deny --locked check bans licenses sources

test: lint deny
	$(CARGO) test --locked

clean:
	$(CARGO) clean
