#!/usr/bin/env bash
# The demo lab: on a machine without a real recovery LAN, runs `unbrick serve` inside a network
# namespace with a bridge (no uplink) and network-boots QEMU guests through it, each with a
# Windows-like NTFS disk holding the bad CrowdStrike channel file (04:09 UTC) and the good one
# (05:27 UTC). Watch the server repair them: the agent quarantines the bad file, reports, and the
# guest powers off. Ctrl-C tears everything down (by PID; the namespace is deleted).
# Needs root. GUESTS=N (default 2; odd guests SeaBIOS+iPXE, even ones OVMF with Secure Boot).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (network namespace, tap devices)" >&2; exit 2; }
bash scripts/install-deps.sh
echo "demo: building unbrick and the recovery agent"
cargo build --release -q
cargo build -q --profile agent --target x86_64-unknown-linux-musl -p remediation-payload --bin unbrick-agent
UB=$PWD/target/release/unbrick
NS=unbrick-demo
DATA=${UNBRICK_DEMO_DATA:-/var/tmp/unbrick-demo}
W=$(mktemp -d /tmp/unbrick-demo.XXXX)
pids=()
cleanup() {
  trap - EXIT INT TERM
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
$UB image build --data-dir "$DATA" --kernel-dir target/kernel/root \
  --agent target/x86_64-unknown-linux-musl/agent/unbrick-agent
ip netns exec $NS "$UB" serve --data-dir "$DATA" --interface br0 --dhcp full \
  --pool 10.99.0.100-10.99.0.199 --kernel-cmdline unbrick.poweroff &
pids+=($!)
sleep 2

# A 256 MiB GPT disk with one NTFS volume laid out like Windows (LAB.md: no loop devices needed).
make_disk() { # path
  local img=$1 part=$W/part.ntfs mnt=$W/mnt cs
  truncate -s 256M "$img"
  sgdisk -o -n 1:2048:+64M -t 1:0700 "$img" >/dev/null
  truncate -s 64M "$part"; mkntfs -F -Q -q -s 512 -L WINDOWS -p 2048 -H 255 -S 63 "$part"
  mkdir -p "$mnt"; ntfs-3g "$part" "$mnt"
  cs=$mnt/Windows/System32/drivers/CrowdStrike; mkdir -p "$cs"
  { printf '\xaa\xaa\xaa\xaa\x01\x00\x23\x01'; head -c 40000 /dev/urandom; } > "$cs/C-00000291-00000000-00000032.sys"
  { printf '\xaa\xaa\xaa\xaa\x01\x00\x23\x01'; head -c 40000 /dev/urandom; } > "$cs/C-00000291-00000000-00000033.sys"
  touch -d '2024-07-19 04:09:00 UTC' "$cs/C-00000291-00000000-00000032.sys"
  touch -d '2024-07-19 05:27:00 UTC' "$cs/C-00000291-00000000-00000033.sys"
  umount "$mnt"
  dd if="$part" of="$img" bs=1M seek=$((2048 * 512)) oflag=seek_bytes conv=notrunc,sparse status=none
  rm -f "$part"
}

guest() { # name firmware mac
  local name=$1 fw=$2 mac=$3 tap=t$1
  make_disk "$W/$name.img"
  ip -n $NS tuntap add dev "$tap" mode tap; ip -n $NS link set "$tap" master br0 up
  local args=(-accel "${ACCEL:-tcg}" -m 1024 -smp 1 -nodefaults -display none -no-reboot -boot n -serial "file:$W/$name.serial"
              -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no"
              -drive "file=$W/$name.img,format=raw,if=none,id=d0" -device virtio-blk-pci,drive=d0)
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
  echo "demo: guest $name ($fw, $mac) is boot-looping into the network; serial log $W/$name.serial"
}
for i in $(seq 1 "${GUESTS:-2}"); do
  if (( i % 2 )); then guest "pc$i" bios "52:54:00:de:00:$(printf %02x "$i")"; else guest "pc$i" uefi-sb "52:54:00:de:00:$(printf %02x "$i")"; fi
done
echo "demo: watching the server (each guest powers off after its report); Ctrl-C stops everything"
wait "${pids[0]}"
