#!/usr/bin/env bash
# Benchmarks unbrick against the peers named in the issues, side by side in one run, on veth
# between network namespaces created here (no uplink). Prints a Markdown table: the median of
# ROUNDS rounds with the spread (min-max) of each, and unbrick's median over the best peer's.
#   TFTP 32 MiB lock-step (curl) at blksize 512, 1024 (grub) and 1468: unbrick vs atftpd, dnsmasq
#   TFTP 100 lock-step clients at once (each its own address), aggregate
#   TFTP 32 MiB, atftp windowsize 16
#   HTTP 32 MiB x 8 concurrent curl (plain and TLS), and 200 clients pulling kernel + initrd:
#   unbrick vs nginx
#   proxyDHCP DISCOVER->OFFER rate (perfdhcp -i): unbrick vs dnsmasq
#   signed manifest verification of a 20 MB image: unbrick image verify vs sha256sum
# Needs root. Run: bash scripts/bench.sh   (ROUNDS=5 by default)
#   ONLY=tftp,http bash scripts/bench.sh   some of the parts (tftp, http, dhcp, verify)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root" >&2; exit 2; }
ROUNDS=${ROUNDS:-5}
ONLY=${ONLY:-tftp,http,dhcp,verify}
part() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
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
# One address per simulated machine of the concurrent cases (the servers' per-peer limits apply
# to addresses, as on a real LAN).
for i in $(seq 51 249); do ip -n $C addr add 10.99.0.$i/24 dev eth0; done

# Content: 32 MiB of random data, served by everyone from the same bytes.
chmod 755 "$W"; mkdir -p "$W/root"; chmod 755 "$W/root"
head -c $((32 * 1024 * 1024)) /dev/urandom > "$W/root/big.bin"
SMALL=$((4 * 1024 * 1024)); KERNEL=$((10 * 1024 * 1024)); INITRD=$((20 * 1024 * 1024))
head -c $SMALL /dev/urandom > "$W/root/small.bin"
head -c $KERNEL /dev/urandom > "$W/root/kernel.bin"
head -c $INITRD /dev/urandom > "$W/root/initrd.bin"
chmod 644 "$W"/root/*.bin
$UB init --data-dir "$W/data" >/dev/null
cp "$W"/root/*.bin "$W/data/image/"
$UB image sign "$W/data/image" >/dev/null

now() { date +%s.%N; }
# Wall times (s) of ROUNDS runs of a command in the client namespace, one per line.
# A download in the background marks its failure in $W/failed (curl -f: an HTTP error counts).
times() {
  local t0 t1
  for _ in $(seq "$ROUNDS"); do
    rm -f "$W/failed"
    t0=$(now); ip netns exec $C sh -c "$1" >/dev/null 2>&1 || touch "$W/failed"; t1=$(now)
    if [ -e "$W/failed" ]; then echo "FAILED: $1" >&2; echo 999999; continue; fi
    echo "$t1 - $t0" | bc -l
  done
}
# "median min max" of rates (MB/s) for BYTES moved per run, from times on stdin: the median
# is the figure, min-max the spread of the rounds.
rates() { awk -v b="$1" '{ print b / 1048576 / $1 }' | sort -g | awk '{ r[NR] = $1 } END { n = NR; m = (n % 2) ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2; printf "%.1f %.1f %.1f\n", m, r[1], r[n] }'; }
med() { echo "$1" | cut -d' ' -f1; }
show() { set -- $1; echo "$1 ($2-$3)"; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }
best_of() { printf '%s\n' "$@" | sort -g | tail -1; }
start() { ip netns exec "$1" sh -c "exec $2" >"$W/$3.log" 2>&1 & pids+=($!); sleep 1; }

start $S "$UB serve --data-dir $W/data --interface br0 --server-ip 10.99.0.1 --dhcp off" unbrick
start $S "atftpd --daemon --no-fork --logfile /dev/null --maxthread 200 --bind-address 10.99.0.2 --port 69 $W/root" atftpd
start $S "dnsmasq --keep-in-foreground --port=0 --enable-tftp --tftp-max=200 --tftp-root=$W/root --listen-address=10.99.0.3 --bind-interfaces --pid-file=$W/dnsmasq-tftp.pid" dnsmasq-tftp
cat > "$W/nginx.conf" <<NGX
worker_processes 2;
pid $W/nginx.pid;
error_log $W/nginx.err;
events { worker_connections 1024; }
http { access_log off; sendfile on; server { listen 10.99.0.4:80; root $W/root; }
  server { listen 10.99.0.4:443 ssl; ssl_protocols TLSv1.3; ssl_certificate $W/ngx.crt; ssl_certificate_key $W/ngx.key; root $W/root; } }
NGX
# nginx's TLS certificate: P-256, as unbrick's own.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$W/ngx.key" \
  -out "$W/ngx.crt" -days 1 -subj /CN=10.99.0.4 2>/dev/null
start $S "nginx -c $W/nginx.conf -g 'daemon off;'" nginx

SIZE=$((32 * 1024 * 1024))
declare -A R
for srv in unbrick:10.99.0.1 atftpd:10.99.0.2 dnsmasq:10.99.0.3; do
  part tftp || break
  n=${srv%%:*}; ip=${srv##*:}
  # Lock-step (what firmware, iPXE's UNDI driver and grub use) at the block sizes they ask for.
  for bs in 512 1024 1468; do
    R[curl${bs}_$n]=$(times "curl -sS -m 120 --tftp-blksize $bs -o /dev/null tftp://$ip/big.bin" | rates $SIZE)
  done
  R[atftp_$n]=$(times "timeout 120 atftp --option 'blksize 1468' --option 'windowsize 16' -g -r big.bin -l /dev/null $ip" | rates $SIZE)
  # 100 machines at once, each its own address, each fetching a 4 MiB file lock-step.
  R[tftp100_$n]=$(times "for i in \$(seq 50 149); do { curl -sS -m 120 --interface 10.99.0.\$i --tftp-blksize 1468 -o /dev/null tftp://$ip/small.bin || touch $W/failed; } & done; wait" | rates $((SMALL * 100)))
done
# 8 concurrent clients, each fetching the file 8 times over one connection (2 GiB in all).
H="-o /dev/null -o /dev/null -o /dev/null -o /dev/null -o /dev/null -o /dev/null -o /dev/null -o /dev/null"
U=big.bin; U8="$U $U $U $U $U $U $U $U"
if part http; then
R[http_unbrick]=$(times "for i in 1 2 3 4 5 6 7 8; do { curl -sf $H $(for u in $U8; do printf 'http://10.99.0.1:8080/image/%s ' $u; done) || touch $W/failed; } & done; wait" | rates $((SIZE * 64)))
R[http_nginx]=$(times "for i in 1 2 3 4 5 6 7 8; do { curl -sf $H $(for u in $U8; do printf 'http://10.99.0.4/%s ' $u; done) || touch $W/failed; } & done; wait" | rates $((SIZE * 64)))
# The same over TLS (the HTTPS listener, :8443 / :443), both with TLS 1.3 and AES-128-GCM.
TLS="-k --tlsv1.3 --tls13-ciphers TLS_AES_128_GCM_SHA256"
R[https_unbrick]=$(times "for i in 1 2 3 4 5 6 7 8; do { curl -sf $TLS $H $(for u in $U8; do printf 'https://10.99.0.1:8443/image/%s ' $u; done) || touch $W/failed; } & done; wait" | rates $((SIZE * 64)))
R[https_nginx]=$(times "for i in 1 2 3 4 5 6 7 8; do { curl -sf $TLS $H $(for u in $U8; do printf 'https://10.99.0.4/%s ' $u; done) || touch $W/failed; } & done; wait" | rates $((SIZE * 64)))
# The start of a wave: 200 machines pull a kernel and an initrd at once, each over one
# connection from its own address.
KI=$((KERNEL + INITRD))
R[http200_unbrick]=$(times "for i in \$(seq 50 249); do { curl -sf --interface 10.99.0.\$i -o /dev/null -o /dev/null http://10.99.0.1:8080/image/kernel.bin http://10.99.0.1:8080/image/initrd.bin || touch $W/failed; } & done; wait" | rates $((KI * 200)))
R[http200_nginx]=$(times "for i in \$(seq 50 249); do { curl -sf --interface 10.99.0.\$i -o /dev/null -o /dev/null http://10.99.0.4/kernel.bin http://10.99.0.4/initrd.bin || touch $W/failed; } & done; wait" | rates $((KI * 200)))
fi
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; pids=()

# proxyDHCP offers per second: BIOS PXE DISCOVERs from 20,000 simulated clients.
VC=$(printf 'PXEClient:Arch:00000:UNDI:002001' | xxd -p | tr -d '\n')
# Offered rate above what either server sustains on 2 cores, so the answered rate is the capacity.
PERF="perfdhcp -4 -i -l eth0 -r 40000 -p 10 -R 20000 -o 60,$VC -o 93,0000"
# perfdhcp exits 3 when any request went unanswered; the count is what matters.
offers() { { ip netns exec $C sh -c "$PERF" 2>/dev/null || true; } | awk '/received packets:/ {print $3; exit}'; }
# "median min max" offers per second over the rounds (10 s each).
offerstats() { for _ in $(seq "$ROUNDS"); do o=$(offers); echo "${o:-0}"; done | awk '{ print $1 / 10 }' | sort -g | awk '{ r[NR] = $1 } END { n = NR; m = (n % 2) ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2; printf "%d %d %d\n", m, r[1], r[n] }'; }
if part dhcp; then
start $S "$UB serve --data-dir $W/data --interface br0 --server-ip 10.99.0.1 --dhcp proxy" unbrick-dhcp
O_UB=$(offerstats); for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; pids=()
start $S "dnsmasq --keep-in-foreground --port=0 --interface=br0 --bind-interfaces --dhcp-range=10.99.0.0,proxy,255.255.255.0 --pxe-service=x86PC,unbrick,undionly --dhcp-leasefile=$W/dm.leases --pid-file=$W/dnsmasq-dhcp.pid" dnsmasq-dhcp
O_DM=$(offerstats); for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; pids=()
fi

# Signed manifest verification of a 20 MB image vs sha256sum over the same files.
if part verify; then
mkdir -p "$W/img"; head -c $((12 * 1024 * 1024)) /dev/urandom > "$W/img/vmlinuz"; head -c $((8 * 1024 * 1024)) /dev/urandom > "$W/img/initrd.img"
$UB keys generate --out "$W/k" >/dev/null; $UB image sign "$W/img" --key "$W/k/signing.key" >/dev/null
localtimes() { local t0 t1; for _ in $(seq "$ROUNDS"); do t0=$(now); sh -c "$1" >/dev/null; t1=$(now); echo "$t1 - $t0" | bc -l; done; }
V_UB=$(localtimes "$UB image verify $W/img --pubkey $W/k/signing.pub" | rates $((20 * 1048576)))
V_SHA=$(localtimes "sha256sum $W/img/vmlinuz $W/img/initrd.img" | rates $((20 * 1048576)))
fi

# A row: the name, unbrick's "median min max", then "peer=median min max" for each peer; the
# ratio is unbrick's median over the best peer's median.
row() {
  local name=$1 ub=$2 unit=$3; shift 3
  local peers="" best=0 m
  for p in "$@"; do
    m=$(med "${p#*=}")
    peers+="${peers:+, }${p%%=*} $(show "${p#*=}") $unit"
    best=$(best_of "$best" "$m")
  done
  echo "| $name | $(show "$ub") $unit | $peers | $(ratio "$(med "$ub")" "$best")x |"
}
echo
echo "Machine: $(nproc) cores, $(awk '/model name/ {sub(/.*: /, ""); print; exit}' /proc/cpuinfo), kernel $(uname -r)"
echo
echo "| benchmark (median of $ROUNDS rounds, min-max in brackets) | unbrick | peer(s) | unbrick / best peer (medians) |"
echo "|---|---|---|---|"
if part tftp; then
for bs in 512 1024 1468; do
  row "TFTP 32 MiB lock-step, curl blksize $bs" "${R[curl${bs}_unbrick]}" MB/s "atftpd=${R[curl${bs}_atftpd]}" "dnsmasq=${R[curl${bs}_dnsmasq]}"
done
row "TFTP 100 clients at once, 4 MiB each, lock-step blksize 1468 (aggregate)" "${R[tftp100_unbrick]}" MB/s "atftpd=${R[tftp100_atftpd]}" "dnsmasq=${R[tftp100_dnsmasq]}"
row "TFTP 32 MiB, atftp blksize 1468 windowsize 16" "${R[atftp_unbrick]}" MB/s "atftpd=${R[atftp_atftpd]}" "dnsmasq=${R[atftp_dnsmasq]}"
fi
if part http; then
row "HTTP 32 MiB, 8 concurrent curl x 8 downloads each" "${R[http_unbrick]}" MB/s "nginx=${R[http_nginx]}"
row "HTTPS 32 MiB, 8 concurrent curl x 8 downloads each (TLS 1.3, AES-128-GCM)" "${R[https_unbrick]}" MB/s "nginx=${R[https_nginx]}"
row "HTTP wave start: 200 clients at once, kernel 10 MiB + initrd 20 MiB each" "${R[http200_unbrick]}" MB/s "nginx=${R[http200_nginx]}"
fi
part dhcp && row "proxyDHCP offers/s (perfdhcp -i, 40000/s offered, 20000 clients, 10 s)" "$O_UB" "" "dnsmasq=$O_DM"
part verify && row "verify signed 20 MB image (hash every artefact)" "$V_UB" MB/s "sha256sum=$V_SHA"
exit 0
