#!/usr/bin/env bash
# The README's "run" command: installs what the demo needs, builds unbrick and the recovery agent,
# then runs `unbrick demo` (network namespace with a bridge and no uplink, the server inside it,
# GUESTS QEMU machines boot-looping with the bad CrowdStrike channel file on their NTFS disks, the
# console at http://127.0.0.1:8080 with a login token printed). Ctrl-C stops everything by PID
# and deletes the namespace. Needs root. GUESTS=N (default 4).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (network namespace, tap devices)" >&2; exit 2; }
bash scripts/install-deps.sh
echo "demo: building unbrick and the recovery agent"
cargo build --release -q --bin unbrick
cargo build -q --profile agent --target x86_64-unknown-linux-musl -p remediation-payload --bin unbrick-agent
exec target/release/unbrick demo --guests "${GUESTS:-4}" --kernel-dir target/kernel/root \
  --agent target/x86_64-unknown-linux-musl/agent/unbrick-agent "$@"
