#!/usr/bin/env bash
# Benchmarks unbrick against the peers named in the issues, side by side in one run, on veth
# between network namespaces created here (no uplink). Prints a Markdown table.
#   TFTP 32 MiB, curl blksize 1468 and atftp windowsize 16: unbrick vs atftpd vs dnsmasq
#   HTTP 32 MiB x 8 concurrent curl: unbrick vs nginx
#   proxyDHCP DISCOVER->OFFER rate (perfdhcp -i): unbrick vs dnsmasq
#   signed manifest verification of a 20 MB image: unbrick image verify vs sha256sum
# Needs root. Run: bash scripts/bench.sh   (ROUNDS=5 by default; best round is reported)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root" >&2; exit 2; }
ROUNDS=${ROUNDS:-5}
cargo build --release -q
UB=$PWD/target/release/unbrick
S=ubbench-s$$; C=ubbench-c$$
W=$(mktemp -d /tmp/unbrick-bench.XXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  ip netns del $S 2>/dev/null || true; ip netns del $C 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

ip netns add $S; ip netns add $C
ip -n $S link set lo up; ip -n $C link set lo up
ip -n $S link add br0 type bridge stp_state 0 forward_delay 0
for a in 1 2 3 4; do ip -n $S addr add 10.99.0.$a/24 dev br0; done
ip -n $S link set br0 up
ip -n $S link add h0 type veth peer name eth0 netns $C
ip -n $S link set h0 master br0 up
ip -n $C link set eth0 up
ip -n $C addr add 10.99.0.50/24 dev eth0

# Content: 32 MiB of random data, served by everyone from the same bytes.
chmod 755 "$W"; mkdir -p "$W/root"; chmod 755 "$W/root"
head -c $((32 * 1024 * 1024)) /dev/urandom > "$W/root/big.bin"; chmod 644 "$W/root/big.bin"
$UB init --data-dir "$W/data" >/dev/null
cp "$W/root/big.bin" "$W/data/image/big.bin"
$UB image sign "$W/data/image" >/dev/null

now() { date +%s.%N; }
# best-of-N wall time of a command run in the client namespace
best() {
  local best=999999 t0 t1 d
  for _ in $(seq "$ROUNDS"); do
    t0=$(now); ip netns exec $C sh -c "$1" >/dev/null 2>&1 || { echo "FAILED: $1" >&2; echo 999999; return; }; t1=$(now)
    d=$(echo "$t1 - $t0" | bc -l); if (( $(echo "$d < $best" | bc -l) )); then best=$d; fi
  done
  echo "$best"
}
mbps() { echo "scale=1; $1 / 1048576 / $2" | bc -l; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }
start() { ip netns exec "$1" sh -c "exec $2" >"$W/$3.log" 2>&1 & pids+=($!); sleep 1; }

start $S "$UB serve --data-dir $W/data --interface br0 --server-ip 10.99.0.1 --dhcp off" unbrick
start $S "atftpd --daemon --no-fork --logfile /dev/null --bind-address 10.99.0.2 --port 69 $W/root" atftpd
start $S "dnsmasq --keep-in-foreground --port=0 --enable-tftp --tftp-root=$W/root --listen-address=10.99.0.3 --bind-interfaces --pid-file=$W/dnsmasq-tftp.pid" dnsmasq-tftp
cat > "$W/nginx.conf" <<NGX
worker_processes 2;
pid $W/nginx.pid;
error_log $W/nginx.err;
events { worker_connections 1024; }
http { access_log off; sendfile on; server { listen 10.99.0.4:80; root $W/root; } }
NGX
start $S "nginx -c $W/nginx.conf -g 'daemon off;'" nginx

SIZE=$((32 * 1024 * 1024))
declare -A T
for srv in unbrick:10.99.0.1 atftpd:10.99.0.2 dnsmasq:10.99.0.3; do
  n=${srv%%:*}; ip=${srv##*:}
  T[curl_$n]=$(best "curl -sS -m 120 --tftp-blksize 1468 -o /dev/null tftp://$ip/big.bin")
  T[atftp_$n]=$(best "timeout 120 atftp --option 'blksize 1468' --option 'windowsize 16' -g -r big.bin -l /dev/null $ip")
done
# 8 concurrent clients, each fetching the file 8 times over one connection (2 GiB in all).
H="-o /dev/null -o /dev/null -o /dev/null -o /dev/null -o /dev/null -o /dev/null -o /dev/null -o /dev/null"
U=big.bin; U8="$U $U $U $U $U $U $U $U"
T[http_unbrick]=$(best "for i in 1 2 3 4 5 6 7 8; do curl -s $H $(for u in $U8; do printf 'http://10.99.0.1:8080/image/%s ' $u; done) & done; wait")
T[http_nginx]=$(best "for i in 1 2 3 4 5 6 7 8; do curl -s $H $(for u in $U8; do printf 'http://10.99.0.4/%s ' $u; done) & done; wait")
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; pids=()

# proxyDHCP offers per second: BIOS PXE DISCOVERs from 20,000 simulated clients.
VC=$(printf 'PXEClient:Arch:00000:UNDI:002001' | xxd -p | tr -d '\n')
# Offered rate above what either server sustains on 2 cores, so the answered rate is the capacity.
PERF="perfdhcp -4 -i -l eth0 -r 40000 -p 10 -R 20000 -o 60,$VC -o 93,0000"
# perfdhcp exits 3 when any request went unanswered; the count is what matters.
offers() { { ip netns exec $C sh -c "$PERF" 2>/dev/null || true; } | awk '/received packets:/ {print $3; exit}'; }
bestoffers() { local b=0 o; for _ in $(seq "$ROUNDS"); do o=$(offers); o=${o:-0}; (( o > b )) && b=$o; done; echo "$b"; }
start $S "$UB serve --data-dir $W/data --interface br0 --server-ip 10.99.0.1 --dhcp proxy" unbrick-dhcp
O_UB=$(bestoffers); for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; pids=()
start $S "dnsmasq --keep-in-foreground --port=0 --interface=br0 --bind-interfaces --dhcp-range=10.99.0.0,proxy,255.255.255.0 --pxe-service=x86PC,unbrick,undionly --dhcp-leasefile=$W/dm.leases --pid-file=$W/dnsmasq-dhcp.pid" dnsmasq-dhcp
O_DM=$(bestoffers); for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; pids=()

# Signed manifest verification of a 20 MB image vs sha256sum over the same files.
mkdir -p "$W/img"; head -c $((12 * 1024 * 1024)) /dev/urandom > "$W/img/vmlinuz"; head -c $((8 * 1024 * 1024)) /dev/urandom > "$W/img/initrd.img"
$UB keys generate --out "$W/k" >/dev/null; $UB image sign "$W/img" --key "$W/k/signing.key" >/dev/null
bestlocal() { local best=999999 t0 t1 d; for _ in $(seq "$ROUNDS"); do t0=$(now); sh -c "$1" >/dev/null; t1=$(now); d=$(echo "$t1 - $t0" | bc -l); if (( $(echo "$d < $best" | bc -l) )); then best=$d; fi; done; echo "$best"; }
V_UB=$(bestlocal "$UB image verify $W/img --pubkey $W/k/signing.pub")
V_SHA=$(bestlocal "sha256sum $W/img/vmlinuz $W/img/initrd.img")

echo
echo "| benchmark (best of $ROUNDS, $(nproc) cores) | unbrick | peer(s) | unbrick / best peer |"
echo "|---|---|---|---|"
bp=$(echo "${T[curl_atftpd]} ${T[curl_dnsmasq]}" | tr ' ' '\n' | sort -g | head -1)
echo "| TFTP 32 MiB, curl blksize 1468 | $(mbps $SIZE ${T[curl_unbrick]}) MB/s | atftpd $(mbps $SIZE ${T[curl_atftpd]}) MB/s, dnsmasq $(mbps $SIZE ${T[curl_dnsmasq]}) MB/s | $(ratio $bp ${T[curl_unbrick]})x |"
bp=$(echo "${T[atftp_atftpd]} ${T[atftp_dnsmasq]}" | tr ' ' '\n' | sort -g | head -1)
echo "| TFTP 32 MiB, atftp blksize 1468 windowsize 16 | $(mbps $SIZE ${T[atftp_unbrick]}) MB/s | atftpd $(mbps $SIZE ${T[atftp_atftpd]}) MB/s, dnsmasq $(mbps $SIZE ${T[atftp_dnsmasq]}) MB/s | $(ratio $bp ${T[atftp_unbrick]})x |"
echo "| HTTP 32 MiB, 8 concurrent curl x 8 downloads each | $(mbps $((SIZE * 64)) ${T[http_unbrick]}) MB/s | nginx $(mbps $((SIZE * 64)) ${T[http_nginx]}) MB/s | $(ratio ${T[http_nginx]} ${T[http_unbrick]})x |"
echo "| proxyDHCP offers/s (perfdhcp -i, 40000/s offered, 20000 clients, 10 s) | $((O_UB / 10)) | dnsmasq $((O_DM / 10)) | $(ratio $O_UB $O_DM)x |"
echo "| verify signed 20 MB image (hash every artefact) | $(mbps $((20 * 1048576)) $V_UB) MB/s | sha256sum $(mbps $((20 * 1048576)) $V_SHA) MB/s | $(ratio $V_SHA $V_UB)x |"
