#!/usr/bin/env bash
# The campaign at scale (#15): 2,000 simulated machines in four waves against the release
# server, once undisturbed and once with the server SIGKILLed at random moments and restarted as
# systemd would, then the same fleet booted through simulated Redfish controllers. Prints each
# run's timeline, the restarts, duplicates (0), lost (0) and total times side by side. The test
# command runs the same tests with 600 machines (FLEETSIM_HOSTS unset).
#
#   sudo bash scripts/fleetbench.sh
#   FLEETSIM_HOSTS=5000 sudo bash scripts/fleetbench.sh
set -euo pipefail
export FLEETSIM_HOSTS=${FLEETSIM_HOSTS:-2000} BENCH_NAME=scripts/fleetbench.sh
exec bash "$(dirname "$0")/release-blackbox.sh" --test-threads 1 --nocapture \
  fleetsim::simulated_hosts_in_four_waves_survive_sigkills \
  fleetsim::simulated_hosts_network_booted_through_their_controllers
