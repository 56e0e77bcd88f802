#!/usr/bin/env bash
# Console and agent-API load benchmark (issue #5), in a network namespace made here (no uplink):
#   1,000 simulated agents, each: boot script (token) over HTTP, then hello + 5 steps + report
#   over HTTPS with the certificate pinned, on one kept connection like the real agent. Three
#   runs, each on a fresh store: all active at once with the agent's pauses between requests;
#   all in the same instant back to back (stress); the same with a new connection per request.
#   After each, the server is stopped and every acknowledged event is looked up in the store
#   (zero lost). Also the server's peak RSS (VmHWM) and console host-table render times at
#   10,000 hosts. Prints a table against the issue's targets.
# Needs root. Run: bash scripts/bench-console.sh   (AGENTS=1000 HOSTS=10000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-console.sh: run as root" >&2; exit 2; }
AGENTS=${AGENTS:-1000}; HOSTS=${HOSTS:-10000}
cargo build --release -q --bin unbrick && cargo build --release -q -p unbrick-testtools --bin unbrick-loadgen
UB=$PWD/target/release/unbrick; LG=$PWD/target/release/unbrick-loadgen
NS=ubbenchc$$; W=$(mktemp -d /tmp/unbrick-benchc.XXXX); SPID=
cleanup() { [ -n "$SPID" ] && kill "$SPID" 2>/dev/null; sleep 0.5; [ -n "$SPID" ] && kill -9 "$SPID" 2>/dev/null; ip netns del $NS 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
ip netns add $NS; ip -n $NS link set lo up
ip -n $NS link add br0 type bridge; ip -n $NS addr add 10.99.0.1/24 dev br0; ip -n $NS link set br0 up
$UB init --data-dir "$W/data" >/dev/null
# A stand-in kernel and initrd so that boot scripts hand out the payload (and a token).
head -c 1048576 /dev/urandom > "$W/data/image/vmlinuz"; head -c 1048576 /dev/urandom > "$W/data/image/initrd.img"
$UB image sign "$W/data/image" --key "$W/data/keys/signing.key" >/dev/null
TOKEN=$($UB tokens create --name bench --data-dir "$W/data" 2>/dev/null)
FP=$($UB init --data-dir "$W/data" | awk '/cert.pem/ {gsub(/[()]/, "", $NF); print $NF}')
serve() { ip netns exec $NS "$UB" serve --data-dir "$W/data" --interface br0 --dhcp off > "$W/server.log" 2>&1 & SPID=$!
  for _ in $(seq 100); do ip netns exec $NS curl -sf -m 1 http://10.99.0.1:8080/healthz >/dev/null && return; sleep 0.1; done; cat "$W/server.log"; exit 1; }
stop() { kill -TERM "$SPID"; wait "$SPID" || true; SPID=; }
rss() { awk '/VmHWM/ {print int($2/1024)}' /proc/"$SPID"/status; }

# One run of the load generator against a fresh store: agents RUN_NAME [ENV=VALUE ...].
# Prints its result lines; counts the server's and the load generator's CPU; checks the store.
agents() {
  local name=$1; shift
  rm -rf "$W/data/store"; $UB init --data-dir "$W/data" >/dev/null
  serve
  local cpu0; cpu0=$(awk '{print $14 + $15}' /proc/"$SPID"/stat)
  ip netns exec $NS env "$@" /usr/bin/time -f '%U %S' -o "$W/lg.time" "$LG" agents http://10.99.0.1:8080 https://10.99.0.1:8443 "$FP" "$AGENTS" "$W/acks.$name" > "$W/out.$name" 2>>"$W/loadgen.err"
  echo "cpu (1/100 s): server $(( $(awk '{print $14 + $15}' /proc/"$SPID"/stat) - cpu0 )), load generator $(awk '{printf "%d", ($1 + $2) * 100}' "$W/lg.time")" >> "$W/out.$name"
  echo "rss $(rss)" >> "$W/out.$name"
  stop
  "$LG" verify "$W/data" "$W/acks.$name" >> "$W/out.$name"
  sed "s/^/[$name] /" "$W/out.$name"
}
field() { sed -n "s/.*$2 \([0-9.]*\).*/\1/p" "$W/out.$1" | head -1; }
# The agents as they run: all started within 1 s, each pausing 0.2-0.6 s between its requests
# (the real agent's steps are that far apart or more), so that all are active at once.
agents paced RAMP_MS=1000 PACE_MS=400
# Stress: all at the same instant, requests back to back, one kept connection per agent (what
# the agent does) and a new connection per request (what it did before).
agents burst RAMP_MS=0
agents burst-newconn RAMP_MS=0 NEW_CONN=1
serve
CON=$(ip netns exec $NS "$LG" console http://10.99.0.1:8080 "$TOKEN" "$HOSTS"); echo "$CON"
RSS_ALL=$(rss)
stop

page=$(echo "$CON" | awk -F'p50 ' '/page 1/ {split($2,a," "); print a[1]}')
search=$(echo "$CON" | awk -F'p50 ' '/search/ {split($2,a," "); print a[1]}')
lost() { sed -n 's/.*, \([0-9]*\) lost/\1/p' "$W/out.$1"; }
echo
echo "| measurement ($(nproc) cores shared by server and load generator) | result | target |"
echo "|---|---|---|"
echo "| $AGENTS agents x (hello + 5 steps + report) over HTTPS, started within 1 s, 0.2-0.6 s between requests (at most $(field paced 'at most') active at once): events lost | $(lost paced) of $((AGENTS * 7)) | 0 |"
echo "| the same: p50 / p99 latency | $(field paced p50) / $(field paced p99) ms | p99 < 100 ms |"
echo "| all $AGENTS at the same instant, requests back to back, one connection per agent: p50 / p99, lost | $(field burst p50) / $(field burst p99) ms, $(lost burst) lost | - |"
echo "| the same, first request (TCP + TLS handshake + hello) / later requests: p99 | $(sed -n 's/^first request.* p99 \([0-9.]*\) ms;.*/\1/p' "$W/out.burst") / $(sed -n 's/.*later requests.* p99 \([0-9.]*\) ms/\1/p' "$W/out.burst") ms | - |"
echo "| the same, throughput ($(sed -n 's/^cpu (1\/100 s): //p' "$W/out.burst") CPU 1/100 s) | $(sed -n 's/.*= \([0-9]*\) req\/s.*/\1/p' "$W/out.burst") req/s | - |"
echo "| all at once with a new TLS connection per request: p50 / p99, throughput | $(field burst-newconn p50) / $(field burst-newconn p99) ms, $(sed -n 's/.*= \([0-9]*\) req\/s.*/\1/p' "$W/out.burst-newconn") req/s | - |"
echo "| console host table, first page, $HOSTS hosts (p50) | $page ms | fast |"
echo "| console search at $HOSTS hosts (p50) | $search ms | fast |"
echo "| server peak RSS after the agents (paced / burst) / after $HOSTS hosts and console | $(field paced rss) / $(field burst rss) MB / $RSS_ALL MB | < 100 MB |"
