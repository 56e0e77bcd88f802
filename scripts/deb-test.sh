#!/usr/bin/env bash
# The Debian package on a clean Debian 12: the test command's check of scripts/deb.sh's output.
#
#   bash scripts/deb-test.sh root    make the clean root (mmdebstrap from the archive; the test
#                                    command starts this early, in the background)
#   bash scripts/deb-test.sh check   install target/deb/unbrick_*.deb into it with apt (its
#                                    dependencies from the archive), then run there, as an admin
#                                    would: unbrick init, unbrick image build (no arguments: the
#                                    kernel is found in the apt cache), unbrick doctor and
#                                    unbrick serve --help
#
# The commands run chrooted, inside a network namespace this script creates, whose only
# interfaces are loopback and a veth pair with both ends inside: doctor's DHCP probe never reaches a real network.
# Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD
root=$here/target/deb/root
mirror=${DEB_MIRROR:-http://deb.debian.org/debian}

make_root() {
    rm -rf "$root"
    mkdir -p "$(dirname "$root")"
    # --variant=apt: essential packages and apt, nothing else; the package lists are kept so
    # that apt can install the package later.
    mmdebstrap --quiet --variant=apt --skip=cleanup/apt/lists --skip=cleanup/apt/cache \
      --aptopt='Acquire::Retries "3"' bookworm "$root" "$mirror" \
      "deb $mirror bookworm-updates main" "deb http://deb.debian.org/debian-security bookworm-security main"
    echo "clean Debian 12 root at $root ($(du -sh "$root" | cut -f1))"
}

case ${1:-} in
  root) make_root; exit 0 ;;
  check)
    # A root the package was installed into before is not clean: make a new one.
    if [ ! -x "$root/usr/bin/apt-get" ] || [ -e "$root/var/lib/dpkg/info/unbrick.list" ]; then
      make_root
    fi
    ;;
  *)
    echo "usage: scripts/deb-test.sh root|check" >&2
    exit 2
    ;;
esac

deb=$(ls "$here"/target/deb/unbrick_*.deb)
ns=ubdeb-$$
mounted=()
cleanup() {
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -l "${mounted[i]}" 2>/dev/null || true; done
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
fail() { echo "deb-test: FAIL: $*" >&2; exit 1; }

# apt in the chroot needs /proc, /dev and the host's resolver (in the host's namespace: it
# downloads the dependencies from the archive).
for m in proc dev; do
  case $m in
    proc) mount -t proc proc "$root/proc" ;;
    dev) mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev" ;;
  esac
  mounted+=("$root/$m")
done
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp "$deb" "$root/tmp/"
echo "== apt-get install $(basename "$deb") into the clean root"
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  -o Acquire::Retries=3 "/tmp/$(basename "$deb")" >"$here/target/deb/apt.log" 2>&1 ||
  { tail -n 30 "$here/target/deb/apt.log"; fail "apt-get install of the package"; }
grep -E '^(Setting up unbrick|unbrick installed)' "$here/target/deb/apt.log" || fail "the package's postinst did not run"
chroot "$root" getent passwd unbrick >/dev/null || fail "postinst made no unbrick user"
for f in /usr/bin/unbrick /usr/lib/unbrick/unbrick-agent /lib/systemd/system/unbrick.service \
  /usr/lib/sysctl.d/99-unbrick.conf /usr/share/man/man1/unbrick-image-build.1.gz \
  /usr/share/bash-completion/completions/unbrick; do
  [ -e "$root$f" ] || fail "$f is not installed"
done
chroot "$root" sh -c 'zcat /usr/share/man/man1/unbrick-doctor.1.gz | grep -q "^.TH unbrick-doctor"' || fail "man page"

# The kernel: a Debian-signed 6.12 package in the apt cache, as after `apt-get download` (the
# test command fetched it once for the other tests; here it is what `image build` must find).
cp "$here"/target/kernel/linux-image-*.deb "$root/var/cache/apt/archives/"

# The network namespace: loopback and a veth pair whose both ends are in it.
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add ub0 type veth peer name ub1
ip -n "$ns" addr add 10.213.0.1/24 dev ub0
ip -n "$ns" link set ub1 up
ip -n "$ns" link set ub0 up
# Each command in the namespace, chrooted, with the namespace's own /sys and /proc (mounted in
# the private mount namespace `ip netns exec` makes, so they go away with the command).
run() {
  ip netns exec "$ns" sh -c 'mount -t sysfs sysfs "$0/sys" && mount -t proc proc "$0/proc" && exec chroot "$0" "$@"' \
    "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb "$@"
}

echo "== unbrick init"
out=$(run unbrick init) || fail "unbrick init: $out"
echo "$out"
grep -q "unbrick image build" <<<"$out" || fail "init does not name the next step"
[ -f "$root/var/lib/unbrick/unbrick.toml" ] || ls "$root/var/lib/unbrick"

echo "== unbrick image build (no arguments)"
out=$(run unbrick image build 2>&1) || { echo "$out"; fail "unbrick image build"; }
echo "$out" | tail -n 12
grep -Eq 'kernel 6\.(1[2-9]|[2-9][0-9])' <<<"$out" || fail "image build does not say which kernel it used"

echo "== unbrick doctor --interface ub0"
set +e
out=$(run unbrick doctor --interface ub0 2>&1)
rc=$?
set -e
echo "$out"
echo "doctor exit code $rc"
[ "$rc" = 0 ] || [ "$rc" = 1 ] || fail "doctor did not run its checks (exit $rc)"
for check in interface image rules; do
  grep -qi "$check" <<<"$out" || fail "doctor printed no $check check"
done
grep -Eq '^ok +image: .*artefacts signed by' <<<"$out" || fail "doctor does not find the built image good"
grep -Eq '^ok +rules: .*expires' <<<"$out" || fail "doctor does not check the rules' expiry"
# The probe DISCOVER went out on ub0 (the namespace's segment, where nothing answers).
grep -q 'no DHCP server answered a DISCOVER' <<<"$out" || fail "doctor's DHCP probe did not run on ub0"

echo "== unbrick serve --help"
out=$(run unbrick serve --help) || fail "serve --help"
grep -q -- "--interface" <<<"$out" || fail "serve --help names no --interface"
echo "deb-test: OK ($(basename "$deb") installed, initialised, image built, doctor ran)"
