#!/usr/bin/env bash
# The demo lab: on a machine without a real recovery LAN, runs `unbrick serve` inside a network
# namespace with a bridge (no uplink) and network-boots QEMU guests through it (SeaBIOS+iPXE and
# OVMF with Secure Boot by default), printing what the server records. Ctrl-C tears it all down.
# Needs root. Until the recovery agent and the web console exist, the guests boot the recovery
# kernel and stop there.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (network namespace, tap devices)" >&2; exit 2; }
bash scripts/install-deps.sh
cargo build --release -q
UB=$PWD/target/release/unbrick
NS=unbrick-demo
DATA=${UNBRICK_DEMO_DATA:-/var/tmp/unbrick-demo}
W=$(mktemp -d /tmp/unbrick-demo.XXXX)
pids=()
cleanup() {
  echo; echo "demo: stopping (by PID) and deleting namespace $NS"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  ip netns del $NS 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT INT TERM
ip netns del $NS 2>/dev/null || true
ip netns add $NS
ip -n $NS link set lo up
ip -n $NS link add br0 type bridge stp_state 0 forward_delay 0
ip -n $NS addr add 10.99.0.1/24 dev br0
ip -n $NS link set br0 up

$UB init --data-dir "$DATA"
KERNEL=$(ls target/kernel/root/boot/vmlinuz-* | head -n1)
if [ ! -f "$DATA/image/vmlinuz" ]; then
  cp "$KERNEL" "$DATA/image/vmlinuz"
  printf '' | cpio --quiet -o -H newc | gzip -9n > "$DATA/image/initrd.img"
  $UB image sign "$DATA/image"
fi
ip netns exec $NS "$UB" serve --data-dir "$DATA" --interface br0 --dhcp full --pool 10.99.0.100-10.99.0.199 &
pids+=($!)
sleep 2

guest() { # name firmware mac
  local name=$1 fw=$2 mac=$3 tap=t$1
  ip -n $NS tuntap add dev "$tap" mode tap; ip -n $NS link set "$tap" master br0 up
  local args=(-accel "${ACCEL:-tcg}" -m 1024 -smp 1 -nodefaults -display none -no-reboot -boot n -serial "file:$W/$name.serial"
              -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no")
  case $fw in
    bios) args+=(-device "virtio-net-pci,netdev=n0,mac=$mac") ;;
    uefi-sb) cp /usr/share/OVMF/OVMF_VARS_4M.ms.fd "$W/$name.vars"
      args+=(-machine q35,smm=on -global driver=cfi.pflash01,property=secure,value=on
             -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd
             -drive "if=pflash,format=raw,unit=1,file=$W/$name.vars"
             -device "virtio-net-pci,netdev=n0,mac=$mac,romfile=,bootindex=1") ;;
  esac
  ip netns exec $NS qemu-system-x86_64 "${args[@]}" &
  pids+=($!)
  echo "demo: guest $name ($fw, $mac) started; serial log $W/$name.serial"
}
for i in $(seq 1 "${GUESTS:-2}"); do
  if (( i % 2 )); then guest "pc$i" bios "52:54:00:de:00:0$i"; else guest "pc$i" uefi-sb "52:54:00:de:00:0$i"; fi
done
echo "demo: watching the server; Ctrl-C stops everything"
wait "${pids[0]}"
