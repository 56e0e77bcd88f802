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
export SOAK_SECS=${SOAK_SECS:-1800} BENCH_NAME=scripts/soak.sh
exec bash "$(dirname "$0")/release-blackbox.sh" fleetsim::soak_under_steady_load --exact --nocapture
