#!/usr/bin/env bash
# Console and agent-API load benchmark (issue #5), in a network namespace made here (no uplink):
#   1,000 simulated agents at once, each: boot script (token) over HTTP, then hello + 5 steps +
#   report over HTTPS with the certificate pinned (a new TLS connection per request, like the
#   real agent); then the server is stopped and every acknowledged event is looked up in the
#   store (zero lost); the server's peak RSS (VmHWM); console host-table render times at
#   10,000 hosts. Prints a table against the issue's targets.
# Needs root. Run: bash scripts/bench-console.sh   (AGENTS=1000 HOSTS=10000 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench-console.sh: run as root" >&2; exit 2; }
AGENTS=${AGENTS:-1000}; HOSTS=${HOSTS:-10000}
cargo build --release -q --bin unbrick && cargo build --release -q -p web-console --bin unbrick-loadgen
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

serve
CPU0=$(awk '{print $14 + $15}' /proc/"$SPID"/stat)
AG=$(ip netns exec $NS /usr/bin/time -f '%U %S' -o "$W/lg.time" "$LG" agents http://10.99.0.1:8080 https://10.99.0.1:8443 "$FP" "$AGENTS" "$W/acks" 2>"$W/loadgen.err")
echo "$AG"
CPU_SRV=$(( $(awk '{print $14 + $15}' /proc/"$SPID"/stat) - CPU0 ))
CPU_LG=$(awk '{printf "%d", ($1 + $2) * 100}' "$W/lg.time")
echo "CPU (1/100 s): server $CPU_SRV, load generator $CPU_LG"
RSS_AGENTS=$(rss)
stop
VER=$("$LG" verify "$W/data" "$W/acks"); echo "$VER"
# The same fleet arriving over 10 s (100 agents a second) instead of all in the same instant.
rm -rf "$W/data/store"; $UB init --data-dir "$W/data" >/dev/null
serve
AGR=$(ip netns exec $NS env RAMP_MS=10000 "$LG" agents http://10.99.0.1:8080 https://10.99.0.1:8443 "$FP" "$AGENTS" "$W/acks2" 2>>"$W/loadgen.err")
echo "$AGR"
stop
VER2=$("$LG" verify "$W/data" "$W/acks2"); echo "$VER2"
serve
CON=$(ip netns exec $NS "$LG" console http://10.99.0.1:8080 "$TOKEN" "$HOSTS"); echo "$CON"
RSS_ALL=$(rss)
stop

p99=$(echo "$AG" | sed -n 's/.*p99 \([0-9.]*\).*/\1/p'); rate=$(echo "$AG" | sed -n 's/.*= \([0-9]*\) req\/s.*/\1/p')
lost=$(echo "$VER" | sed -n 's/.*, \([0-9]*\) lost/\1/p')
p99r=$(echo "$AGR" | sed -n 's/.*p99 \([0-9.]*\).*/\1/p'); p50r=$(echo "$AGR" | sed -n 's/.*p50 \([0-9.]*\).*/\1/p')
lost2=$(echo "$VER2" | sed -n 's/.*, \([0-9]*\) lost/\1/p')
page=$(echo "$CON" | awk -F'p50 ' '/page 1/ {split($2,a," "); print a[1]}')
search=$(echo "$CON" | awk -F'p50 ' '/search/ {split($2,a," "); print a[1]}')
echo
echo "| measurement ($(nproc) cores) | result | target |"
echo "|---|---|---|"
echo "| $AGENTS agents x (hello + 5 steps + report) over HTTPS, all at once: events lost | $lost | 0 |"
echo "| agent API p99 latency, all at once (new TLS connection per request) | $p99 ms | < 100 ms |"
echo "| agent API throughput, all at once (CPU 1/100 s: server $CPU_SRV, load generator $CPU_LG) | $rate req/s | - |"
echo "| the same $AGENTS agents arriving over 10 s: p50 / p99, events lost | $p50r / $p99r ms, $lost2 lost | < 100 ms, 0 |"
echo "| console host table, first page, $HOSTS hosts (p50) | $page ms | fast |"
echo "| console search at $HOSTS hosts (p50) | $search ms | fast |"
echo "| server peak RSS after the agents / after $HOSTS hosts and console | $RSS_AGENTS MB / $RSS_ALL MB | < 100 MB |"
