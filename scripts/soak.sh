#!/usr/bin/env bash
# Soak bench (#15): 200 simulated machines loop through PXE and the waiting room (a poll every
# 5 s, a reboot every minute), 4 console users load pages, 10 live clients hold the event
# stream, against one server in a test namespace; a row per minute with the server's RSS, open
# descriptors, data directory size, requests done, p99 latencies and errors, then the verdict
# (no growth beyond the data itself). The test command runs 2 minutes of it
# (fleetsim::soak_under_steady_load); this runs 30.
#
#   sudo bash scripts/soak.sh            30 minutes
#   SOAK_SECS=600 sudo bash scripts/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "scripts/soak.sh: run as root (network namespaces)" >&2
  exit 2
fi
export SOAK_SECS=${SOAK_SECS:-1800}
cargo build --release -q -p unbrick-testtools --bin unbrick-fleetsim
# The server measured is the release build an admin runs (the test command's 2 minutes use the
# debug build the other tests use).
cargo build --release -q --bin unbrick
export UNBRICK_BIN=${UNBRICK_BIN:-$PWD/target/release/unbrick}
exec cargo test -q --test blackbox -- fleetsim::soak_under_steady_load --exact --nocapture
