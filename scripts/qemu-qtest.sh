#!/usr/bin/env bash
# QEMU's own conformance test for vhost-user-blk backends, run against `dataplane serve`.
#
#   scripts/qemu-qtest.sh [--build-only]
#
# Builds once, into "${DATAPLANE_QTEST_DIR:-$HOME/.cache/dataplane/qemu-qtest}", QEMU's
# tests/qtest/qos-test (which holds vhost-user-blk-test.c) and the qemu-system-x86_64 it
# drives, from Debian's qemu source package of the installed QEMU (Debian's own binary lacks
# the qtest accelerator), configured minimally.  A rerun with the same source does not build.
# Then runs the test's vhost-user-blk cases (basic, indirect, idx, nxvirtq, hotplug,
# multiqueue): the test starts its "storage daemon" with one inherited listening fd per
# export, and scripts/qsd-standin turns that command line into `dataplane serve --device
# socket=fd:N,...`.  Prints the TAP lines and "qemu-qtest: P/T passed"; exits 1 unless all
# passed.
#
#   DATAPLANE  the dataplane command (default: this checkout's .venv/bin/dataplane, else
#              `dataplane` on PATH)
#
# Needs root once, to add deb-src entries mirroring apt's deb ones (when apt has no qemu
# source) and to run apt-get; the build tools come from scripts/install-deps.sh.  The build
# is niced and takes a few CPU-minutes on 2 cores.
set -euo pipefail

FORMAT=1
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
DIR="${DATAPLANE_QTEST_DIR:-$HOME/.cache/dataplane/qemu-qtest}"
CONFIGURE=(--target-list=x86_64-softmmu --without-default-features --enable-tools
    --enable-vhost-user --enable-vhost-user-blk-server --enable-vhost-kernel
    --enable-fdt=system --disable-werror --disable-docs)
TESTS=(basic indirect idx nxvirtq hotplug multiqueue)
QOS=/x86_64/pc/i440FX-pcihost/pci-bus-pc/pci-bus/vhost-user-blk-pci
QOS_PATHS=(-p "$QOS/vhost-user-blk-pci-tests" -p "$QOS/vhost-user-blk/vhost-user-blk-tests")

die() { echo "qemu-qtest: error: $*" >&2; exit 2; }
log() { echo "qemu-qtest: $*" >&2; }

build_only=0
case "${1:-}" in
    --build-only) build_only=1 ;;
    "") ;;
    *) die "usage: scripts/qemu-qtest.sh [--build-only]" ;;
esac

for tool in apt-get dpkg-query dpkg-source meson ninja pkg-config cc; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (run scripts/install-deps.sh)"
done
SRCVER="$(dpkg-query -W -f='${source:Version}' qemu-system-x86 2>/dev/null || true)"
[ -n "$SRCVER" ] || die "qemu-system-x86 is not installed (run scripts/install-deps.sh)"

# deb-src entries for every deb entry apt already has (deb822 .sources stanzas and one-line
# sources.list), so that `apt-get source` reaches the same archives.
enable_deb_src() {
    [ "$(id -u)" -eq 0 ] || die "apt has no source of qemu $SRCVER; run once as root to add deb-src"
    local out=/etc/apt/sources.list.d/dataplane-deb-src
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] && [ "$f" != "$out.sources" ] || continue
        awk 'BEGIN { RS = ""; ORS = "\n\n" }
             { n = split($0, lines, "\n"); deb = 0
               for (i = 1; i <= n; i++)
                   if (lines[i] ~ /^Types:/) {
                       m = split(lines[i], t, /[ \t]+/)
                       for (j = 2; j <= m; j++) if (t[j] == "deb") deb = 1
                   }
               if (deb) { sub(/Types:[^\n]*/, "Types: deb-src"); print } }' "$f"
    done >"$out.sources.tmp"
    if [ -f /etc/apt/sources.list ]; then
        sed -n 's/^[[:space:]]*deb[[:space:]]/deb-src /p' /etc/apt/sources.list >"$out.list.tmp"
        mv "$out.list.tmp" "$out.list"
    fi
    mv "$out.sources.tmp" "$out.sources"
    log "added deb-src entries ($out.*); apt-get update"
    apt-get update -qq -o DPkg::Lock::Timeout=600
}

has_source() {
    # (Not `apt-cache ... | grep -q`: with pipefail, grep's early exit fails the pipeline.)
    local versions
    versions="$(apt-cache showsrc qemu 2>/dev/null | sed -n 's/^Version: //p')"
    case $'\n'"$versions"$'\n' in *$'\n'"$SRCVER"$'\n'*) return 0 ;; esac
    return 1
}

build() {
    local src="$DIR/src" work
    if ! has_source; then
        enable_deb_src
        has_source || die "apt has no source package of qemu $SRCVER, even with deb-src"
    fi
    mkdir -p "$DIR"
    work="$(mktemp -d "$DIR/fetch.XXXXXX")"
    log "fetching Debian's qemu source $SRCVER"
    (cd "$work" && apt-get source -q --download-only -o APT::Sandbox::User=root \
        "qemu=$SRCVER" >&2) || die "apt-get source qemu=$SRCVER failed"
    rm -rf "$src" "$DIR/build"
    log "unpacking"
    # (apt checked the files against the signed archive; dpkg-source may warn that it cannot.)
    dpkg-source -x "$work"/qemu_*.dsc "$src" >/dev/null || die "dpkg-source -x failed"
    rm -rf "$work" "$DIR"/qemu_*.orig.tar.*
    mkdir -p "$DIR/build"
    log "configuring: ${CONFIGURE[*]}"
    (cd "$DIR/build" && nice -n 19 "$src/configure" "${CONFIGURE[@]}" >configure.log 2>&1) \
        || die "configure failed; see $DIR/build/configure.log"
    log "building qemu-system-x86_64 and tests/qtest/qos-test (niced; a few minutes)"
    (cd "$DIR/build" && nice -n 19 ninja -j"$(nproc)" qemu-system-x86_64 tests/qtest/qos-test \
        >ninja.log 2>&1) || { tail -20 "$DIR/build/ninja.log" >&2; die "build failed"; }
    link_firmware
}

# Debian's source has no firmware blobs (SeaBIOS, iPXE come as packages): link the installed
# QEMU's into the first firmware directory of the built one (in its build tree).
link_firmware() {
    local to dir f
    to="$("$DIR/build/qemu-system-x86_64" -L help | sed -n 1p)"
    [ -n "$to" ] || die "the built QEMU names no firmware directory (-L help)"
    mkdir -p "$to"
    while read -r dir; do
        [ -d "$dir" ] || continue
        for f in "$dir"/*; do
            [ -f "$f" ] && [ ! -e "$to/${f##*/}" ] && ln -s "$(readlink -f "$f")" "$to/${f##*/}"
        done
    done < <(qemu-system-x86_64 -L help)
    [ -e "$to/bios-256k.bin" ] || die "no bios-256k.bin for QEMU (apt-get install seabios)"
}

STAMP="format=$FORMAT qemu=$SRCVER configure=${CONFIGURE[*]}"
QEMU="$DIR/build/qemu-system-x86_64"
QOS_TEST="$DIR/build/tests/qtest/qos-test"
# One build at a time in the shared cache (test runs in parallel, other checkouts): the
# build removes the tree first.  Held shared while the tests run, so no build starts then.
mkdir -p "$(dirname "$DIR")"
exec 9>"$DIR.lock"
flock 9
if [ -x "$QEMU" ] && [ -x "$QOS_TEST" ] && [ "$(cat "$DIR/stamp" 2>/dev/null)" = "$STAMP" ]; then
    log "qtest build up to date in $DIR (qemu $SRCVER)"
else
    rm -f "$DIR/stamp"
    build
    echo "$STAMP" >"$DIR/stamp"
    log "built $QOS_TEST"
fi
flock -s 9
[ "$build_only" -eq 1 ] && exit 0

if [ -z "${DATAPLANE:-}" ]; then
    if [ -x "$REPO/.venv/bin/dataplane" ]; then
        DATAPLANE="$REPO/.venv/bin/dataplane"
    else
        DATAPLANE="$(command -v dataplane || true)"
    fi
fi
[ -n "$DATAPLANE" ] || die "no dataplane command: make venv, or set DATAPLANE"
export DATAPLANE
export QTEST_QEMU_BINARY="$QEMU"
export QTEST_QEMU_STORAGE_DAEMON_BINARY="$HERE/qsd-standin"
log "running ${TESTS[*]} against $DATAPLANE"
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
set +e
# Into a file, not a pipe: a backend left behind must not keep the reader waiting.
(cd "$DIR/build" && timeout 600 "$QOS_TEST" --tap -k "${QOS_PATHS[@]}") >"$out" 2>&1
rc=$?
set -e
grep -E '^(not )?ok ' "$out" || true
passed=0
for t in "${TESTS[@]}"; do
    grep -Eq "^ok [0-9]+ .*/$t( |$)" "$out" && passed=$((passed + 1))
done
if [ "$passed" -ne ${#TESTS[@]} ] || [ "$rc" -ne 0 ]; then
    echo "--- qos-test output (exit $rc) ---" >&2
    tail -40 "$out" >&2
fi
echo "qemu-qtest: $passed/${#TESTS[@]} passed"
[ "$passed" -eq ${#TESTS[@]} ] && [ "$rc" -eq 0 ]
