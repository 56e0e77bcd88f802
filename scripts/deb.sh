#!/usr/bin/env bash
# Builds the Debian package target/deb/unbrick_<version>-1_amd64.deb with cargo-deb (its
# configuration is [package.metadata.deb] in Cargo.toml): unbrick in /usr/bin, the static agent
# at /usr/lib/unbrick/unbrick-agent (what `unbrick image build` puts in the image), the systemd
# unit, the sysusers and sysctl files, man pages and shell completions generated from the CLI
# (clap_mangen, clap_complete), the README and the copyright file. Then checks it with lintian.
#
#   bash scripts/deb.sh                   release build (what an admin installs)
#   DEB_PROFILE=dev bash scripts/deb.sh   package the debug build (the test command: no second
#                                         optimised build of the whole workspace)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
profile=${DEB_PROFILE:-release}
cargo_deb=${CARGO_DEB:-/var/tmp/unbrick-cargo-deb/bin/cargo-deb}
out=$root/target/deb
mkdir -p "$out"

case $profile in
  release) bin=$root/target/release/unbrick ;;
  dev) bin=$root/target/debug/unbrick ;;
  *) bin=$root/target/$profile/unbrick ;;
esac
echo "== building unbrick ($profile) and the agent (static, musl)"
cargo build --locked -q --profile "$profile" --bin unbrick
cargo build --locked -q --profile agent --target x86_64-unknown-linux-musl -p remediation-payload --bin unbrick-agent

# Man pages and completions from the CLI itself; the pages of clap's generated `help`
# subcommands are left out. The changelog names the commit the package was built from.
gen=$out/generated
rm -rf "$gen"
"$bin" dist-files --out "$gen" >/dev/null
rm -f "$gen"/man/*-help.1 "$gen"/man/*-help-*.1
gzip -9n "$gen"/man/*.1
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
maintainer=$(sed -n 's/^maintainer = "\(.*\)"/\1/p' Cargo.toml | head -n1)
when=$(date -R -u -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")
cat >"$out/changelog" <<CHANGES
unbrick ($version-1) unstable; urgency=medium

  * Package built from $(git rev-parse --short HEAD 2>/dev/null || echo "a source tree").

 -- $maintainer  $when
CHANGES

echo "== cargo deb"
rm -f "$out"/unbrick_*.deb
# cargo-deb maps target/release/ in the assets to the profile's directory.
# (cargo-deb warns that a dev profile is not what it is for; the version is pinned in
# install-deps.sh.)
"$cargo_deb" --no-build --profile "$profile" --strip -o "$out" -p unbrick
deb=$(ls "$out"/unbrick_*.deb)
echo "built $deb ($(du -h "$deb" | cut -f1))"
dpkg-deb --field "$deb" Depends | sed 's/^/depends: /'

echo "== lintian"
# Errors fail the build; warnings and notes are printed.
lintian --fail-on error --tag-display-limit 0 "$deb"
echo "lintian: no errors"
