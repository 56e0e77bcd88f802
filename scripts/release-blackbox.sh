#!/usr/bin/env bash
# Runs black-box tests against the release build an admin runs (the test command uses the
# debug build): the fleet simulator and the server built with --release, then
# `cargo test --test blackbox -- ARGS`. Used by scripts/soak.sh and scripts/fleetbench.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "${BENCH_NAME:-scripts/release-blackbox.sh}: run as root (network namespaces)" >&2
  exit 2
fi
cargo build --release -q -p unbrick-testtools --bin unbrick-fleetsim
cargo build --release -q --bin unbrick
export UNBRICK_BIN=${UNBRICK_BIN:-$PWD/target/release/unbrick}
exec cargo test -q --test blackbox -- "$@"
