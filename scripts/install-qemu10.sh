#!/usr/bin/env bash
# Unpacks QEMU 10.0.2 from Debian's bookworm-backports beside the system's QEMU 7.2, without
# installing it: qemu-system-x86, qemu-system-common, qemu-system-data (firmware) and
# qemu-utils (in 10.0 it holds qemu-storage-daemon), fetched with `apt-get download` and unpacked with `dpkg -x`
# into DIR (default /opt/qemu-10.0.2; or $DATAPLANE_QEMU10_DIR, or the first argument).
# Idempotent: does nothing when DIR already holds this version.
#
# Run its binaries with the firmware of both packages:
#   DIR/usr/bin/qemu-system-x86_64 -L DIR/usr/share/qemu -L /usr/share/qemu ...
# The guest tests find it there (dataplane/guest/harness/qemu.py find_qemu; DATAPLANE_QEMU=10.0.2 runs
# every guest test on it).
set -euo pipefail
VERSION=10.0.2
DIR=${1:-${DATAPLANE_QEMU10_DIR:-/opt/qemu-$VERSION}}
PKGS=(qemu-system-x86 qemu-system-common qemu-system-data qemu-utils)
SUITE=bookworm-backports
stamp="$DIR/.installed"

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$VERSION" ] && [ -x "$DIR/usr/bin/qemu-system-x86_64" ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-qemu10: need root to add $SUITE to apt and run apt-get update (run as root or with sudo)" >&2
    exit 2
fi
apt_opts=(-o DPkg::Lock::Timeout=300 -qq)
# bookworm-backports: NotAutomatic, so adding it upgrades nothing that is installed.
if ! grep -rqs "$SUITE" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat > /etc/apt/sources.list.d/dataplane-backports.sources <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
apt-get "${apt_opts[@]}" update
# The newest 10.0.2 build in backports (e.g. 1:10.0.2+ds-1~bpo12+1).
ver=$(apt-cache madison qemu-system-x86 | awk -F'|' -v s="$SUITE" '$3 ~ s { gsub(/ /, "", $2); print $2 }' \
    | grep -F ":$VERSION" | head -1 || true)
if [ -z "$ver" ]; then
    echo "install-qemu10: $SUITE has no qemu-system-x86 $VERSION (apt-cache madison qemu-system-x86)" >&2
    exit 1
fi
work=$(mktemp -d)
chmod 755 "$work"  # apt downloads as _apt
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get "${apt_opts[@]}" download "${PKGS[@]/%/=$ver}")
rm -rf "$DIR.tmp"
mkdir -p "$DIR.tmp"
for deb in "$work"/*.deb; do
    dpkg -x "$deb" "$DIR.tmp"
done
echo "$VERSION" > "$DIR.tmp/.installed"
rm -rf "$DIR"
mv "$DIR.tmp" "$DIR"
# Libraries the unpacked binaries need that the system lacks: name them, do not install them.
missing=$(ldd "$DIR/usr/bin/qemu-system-x86_64" "$DIR/usr/bin/qemu-storage-daemon" | grep "not found" | sort -u) || true
if [ -n "$missing" ]; then
    echo "install-qemu10: the unpacked binaries miss libraries:" >&2
    echo "$missing" >&2
    exit 1
fi
"$DIR/usr/bin/qemu-system-x86_64" --version | head -1
