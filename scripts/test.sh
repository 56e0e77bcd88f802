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

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test (unit, property, real clients, QEMU firmware)"
cargo test --workspace --no-fail-fast
