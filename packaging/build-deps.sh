#!/usr/bin/env bash
# Installs what building and testing Strongroom needs on Debian 12, only where missing.
# Idempotent; safe to run on every `make run` / `make test`.
set -euo pipefail

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
have cmake      || need_apt+=(cmake)
have go         || need_apt+=(golang-go)
have cc         || need_apt+=(build-essential)
have make       || need_apt+=(make)
have curl       || need_apt+=(curl)
have python3    || need_apt+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
have pkg-config || need_apt+=(pkg-config)
have perl       || need_apt+=(perl)
[ -f /usr/include/linux/limits.h ] || need_apt+=(linux-libc-dev)
# promtool checks the metrics exposition and the shipped alert rules in the tests.
have promtool   || need_apt+=(prometheus)
# The console's end-to-end test drives Debian's chromium from Node.js.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
have node       || need_apt+=(nodejs)
have npm        || need_apt+=(npm)
# strace traces the daemon's fsyncs against its answers (the durability test).
have strace     || need_apt+=(strace)

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "build-deps: missing ${need_apt[*]}; run as root or: sudo apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
  echo "build-deps: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if ! have cargo; then
  echo "build-deps: cargo not found; install a Rust toolchain (rustup, Rust >= 1.85) first" >&2
  exit 1
fi
