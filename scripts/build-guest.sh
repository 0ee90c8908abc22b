#!/usr/bin/env bash
# Builds the small Linux guest used by dataplane's end-to-end tests and demo.
#
#   scripts/build-guest.sh [OUTDIR]
#
# OUTDIR defaults to "${DATAPLANE_GUEST_DIR:-$HOME/.cache/dataplane/guest}" and receives:
#   vmlinuz    Debian's kernel (from the linux-image-*-amd64 package that the linux-image-amd64
#              metapackage depends on; fetched with `apt-get download`, unpacked with
#              `dpkg -x`, never installed)
#   initrd.gz  a newc cpio (gzip) holding busybox-static, the virtio-blk modules, util-linux's
#              blkdiscard (for `blkdiscard -z`) with its shared libraries, and /init
#   stamp      what the two files were built from; a rerun with the same kernel does nothing
#
# /init mounts proc, sysfs and devtmpfs, loads the modules, waits for the virtio disks, then
# runs `sh /test.sh` when present (append a cpio holding it to the initrd), prints
# "DP-GUEST-EXIT <rc>" and powers off; without /test.sh it drops to a shell.
#
# Needs (see scripts/install-deps.sh): apt-get, dpkg, busybox-static, util-linux, cpio, gzip.
# The only network it uses is Debian's apt repositories.
set -euo pipefail

# Bump when the initrd layout or /init changes, so that cached guests are rebuilt.
FORMAT=1
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk)

die() { echo "build-guest: error: $*" >&2; exit 1; }
log() { echo "build-guest: $*" >&2; }

OUTDIR="${1:-${DATAPLANE_GUEST_DIR:-$HOME/.cache/dataplane/guest}}"
CACHE="$OUTDIR/cache"

for tool in apt-cache apt-get dpkg dpkg-deb cpio gzip find sort sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (run scripts/install-deps.sh)"
done
BUSYBOX=/bin/busybox
[ -x "$BUSYBOX" ] || BUSYBOX="$(command -v busybox || true)"
[ -n "$BUSYBOX" ] && [ -x "$BUSYBOX" ] || die "busybox not found (apt-get install busybox-static)"
# (No `cmd | grep -q` / `| head` here: with pipefail, an early-exiting reader makes the
# writer die of SIGPIPE and the pipeline fail at random.)
case "$("$BUSYBOX" 2>&1 || true)" in
    *BusyBox*) ;;
    *) die "$BUSYBOX does not look like busybox" ;;
esac
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked; the guest needs busybox-static (apt-get install busybox-static)"
fi
BLKDISCARD="$(command -v blkdiscard || true)"
[ -z "$BLKDISCARD" ] && [ -x /usr/sbin/blkdiscard ] && BLKDISCARD=/usr/sbin/blkdiscard
[ -z "$BLKDISCARD" ] && [ -x /sbin/blkdiscard ] && BLKDISCARD=/sbin/blkdiscard
[ -n "$BLKDISCARD" ] || die "util-linux's blkdiscard not found (apt-get install util-linux)"
case "$("$BLKDISCARD" --help 2>&1 || true)" in *--zeroout*) ;; *) false ;; esac \
    || die "$BLKDISCARD does not support -z/--zeroout (need util-linux's blkdiscard)"
command -v ldd >/dev/null 2>&1 || die "'ldd' not found (apt-get install libc-bin)"

# --- resolve the concrete kernel package -------------------------------------------------------
resolve_kernel() {
    # "Depends: linux-image-6.1.0-NN-amd64" (maybe an alternative of signed/unsigned variants).
    apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *|\{0,1\}Depends: *<\{0,1\}\(linux-image-[^ >]*-amd64[^ >]*\)>\{0,1\}.*/\1/p' \
        | sed -n 1p
}
KPKG="$(resolve_kernel)"
if [ -z "$KPKG" ] && [ "$(id -u)" -eq 0 ]; then
    log "linux-image-amd64 unknown to apt; running apt-get update"
    apt-get update -qq || die "apt-get update failed (Debian's apt repositories unreachable?)"
    KPKG="$(resolve_kernel)"
fi
if [ -z "$KPKG" ]; then
    if [ -s "$OUTDIR/stamp" ] && [ -s "$OUTDIR/vmlinuz" ] && [ -s "$OUTDIR/initrd.gz" ]; then
        log "cannot resolve linux-image-amd64 with apt; keeping the guest in $OUTDIR"
        exit 0
    fi
    die "cannot resolve the kernel package behind linux-image-amd64 (run 'apt-get update' as root)"
fi
KVER_PKG="$(apt-cache policy "$KPKG" 2>/dev/null | sed -n 's/^ *Candidate: *//p')"
[ -n "$KVER_PKG" ] && [ "$KVER_PKG" != "(none)" ] || die "apt has no candidate version of $KPKG"

SELF_SUM="$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
STAMP="format=$FORMAT kernel=$KPKG version=$KVER_PKG script=$SELF_SUM"
if [ -s "$OUTDIR/vmlinuz" ] && [ -s "$OUTDIR/initrd.gz" ] && [ -f "$OUTDIR/stamp" ] \
    && [ "$(cat "$OUTDIR/stamp")" = "$STAMP" ]; then
    log "guest up to date in $OUTDIR ($KPKG $KVER_PKG)"
    exit 0
fi

mkdir -p "$CACHE"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/dataplane-guest.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# --- fetch and unpack the kernel package ----------------------------------------------------------
DEB="$(find "$CACHE" -maxdepth 1 -name "${KPKG}_*.deb" | sort | tail -n1)"
if [ -n "$DEB" ] && [ "$(dpkg-deb -f "$DEB" Version)" != "$KVER_PKG" ]; then
    log "dropping stale $(basename "$DEB")"
    rm -f "$CACHE/${KPKG}"_*.deb
    DEB=""
fi
if [ -z "$DEB" ]; then
    SIZE_MIB="$(apt-cache show "$KPKG=$KVER_PKG" 2>/dev/null \
        | awk '/^Size:/ && !n { n = int($2 / 1048576) } END { print n + 0 }')"
    log "downloading $KPKG $KVER_PKG (${SIZE_MIB} MiB, once; then cached in $CACHE)"
    # apt's progress bar on a terminal, its plain "Get:" lines otherwise.
    quiet=()
    [ -t 2 ] || quiet=(-q)
    # apt's _apt sandbox user may not be able to write into $CACHE: download as ourselves.
    (cd "$WORK" && apt-get download "${quiet[@]}" -o APT::Sandbox::User="$(id -un)" \
        "$KPKG=$KVER_PKG" >&2) \
        || die "apt-get download $KPKG failed (try 'apt-get update' as root)"
    DEB="$(find "$WORK" -maxdepth 1 -name "${KPKG}_*.deb" -print -quit)"
    [ -n "$DEB" ] || die "apt-get download produced no .deb for $KPKG"
    mv "$DEB" "$CACHE/"
    DEB="$CACHE/$(basename "$DEB")"
fi
log "unpacking $(basename "$DEB") and building the initramfs"
dpkg -x "$DEB" "$WORK/kpkg" || die "dpkg -x $DEB failed (corrupt download? remove $CACHE)"
VMLINUZ="$(find "$WORK/kpkg/boot" -maxdepth 1 -name 'vmlinuz-*' -print -quit)"
[ -n "$VMLINUZ" ] || die "no /boot/vmlinuz-* in $KPKG"
KREL="${VMLINUZ##*/vmlinuz-}"
MODDIR="$WORK/kpkg/lib/modules/$KREL"
[ -d "$MODDIR" ] || die "no /lib/modules/$KREL in $KPKG"

# --- assemble the initramfs tree ------------------------------------------------------------------
ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,lib/modules,proc,sys,dev,tmp,run,root,etc}
chmod 1777 "$ROOT/tmp"
cp "$BUSYBOX" "$ROOT/bin/busybox"
while read -r applet; do
    case "$applet" in bin/busybox|"") continue ;; esac
    [ -e "$ROOT/$applet" ] || [ -L "$ROOT/$applet" ] || ln -s /bin/busybox "$ROOT/$applet"
done < <("$BUSYBOX" --list-full)

# Modules, in load order; each must depend only on modules loaded before it.
loaded=""
for m in "${MODULES[@]}"; do
    src="$(find "$MODDIR" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \
        -o -name "$m.ko.gz" \) -print -quit)"
    [ -n "$src" ] || die "module $m not found in $KPKG (built in? check the kernel config)"
    dst="$ROOT/lib/modules/$m.ko"
    case "$src" in
        *.ko) cp "$src" "$dst" ;;
        *.ko.xz) xz -dc "$src" >"$dst" || die "cannot decompress $src (install xz-utils)" ;;
        *.ko.zst) zstd -qdc "$src" >"$dst" || die "cannot decompress $src (install zstd)" ;;
        *.ko.gz) gzip -dc "$src" >"$dst" ;;
    esac
    deps="$(tr '\0' '\n' <"$dst" | sed -n 's/^depends=//p')"
    for d in ${deps//,/ }; do
        case " $loaded " in *" $d "*) ;; *) die "module $m needs $d, which is not loaded before it" ;; esac
    done
    loaded="$loaded $m"
done

# util-linux's blkdiscard (busybox's lacks -z) with the libraries ldd lists and the loader.
cp -L "$BLKDISCARD" "$ROOT/usr/sbin/blkdiscard"
rm -f "$ROOT/sbin/blkdiscard" "$ROOT/bin/blkdiscard" "$ROOT/usr/bin/blkdiscard"
while read -r lib; do
    [ -n "$lib" ] || continue
    mkdir -p "$ROOT$(dirname "$lib")"
    cp -L "$lib" "$ROOT$lib"
done < <(ldd "$BLKDISCARD" | sed -n 's/.*=> *\(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) .*/\1/p' | sort -u)
case "$(ldd "$BLKDISCARD")" in *"not found"*) die "ldd $BLKDISCARD: missing libraries" ;; esac

cat >"$ROOT/init" <<'EOF'
#!/bin/sh
# dataplane test guest: see scripts/build-guest.sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do
    insmod "/lib/modules/$m.ko" || echo "DP-GUEST-ERROR insmod $m failed"
done
# Wait for every virtio block device (virtio device id 2) to show up as /dev/vdX.
want=0
for d in /sys/bus/virtio/devices/*/device; do
    [ -f "$d" ] && [ "$(cat "$d")" = 0x0002 ] && want=$((want + 1))
done
i=0
while [ "$i" -lt 200 ]; do
    have=0
    for b in /dev/vd?; do [ -b "$b" ] && have=$((have + 1)); done
    [ "$have" -ge "$want" ] && [ -b /dev/vda ] && break
    sleep 0.1
    i=$((i + 1))
done
[ -b /dev/vda ] || echo "DP-GUEST-ERROR /dev/vda did not appear"
echo "DP-GUEST-READY uptime=$(cut -d' ' -f1 /proc/uptime) disks=$(echo /dev/vd? | tr ' ' ',')"
if [ -f /test.sh ]; then
    cd /tmp
    sh /test.sh
    rc=$?
    sync
    echo "DP-GUEST-EXIT $rc"
    sync
    poweroff -f
    sleep 5
    echo "DP-GUEST-ERROR poweroff failed"
    exit 1
fi
echo "dataplane guest: no /test.sh; starting a shell (poweroff -f to quit;"
echo "  util-linux blkdiscard is /usr/sbin/blkdiscard, plain blkdiscard is busybox's)"
exec setsid cttyhack sh -l
EOF
chmod 755 "$ROOT/init"

# --- pack ---------------------------------------------------------------------------------------
mkdir -p "$OUTDIR"
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort \
    | cpio --quiet -o -H newc --owner=0:0 --reproducible) | gzip -9 -n >"$WORK/initrd.gz"
rm -f "$OUTDIR/stamp"
cp "$VMLINUZ" "$OUTDIR/vmlinuz.tmp" && mv "$OUTDIR/vmlinuz.tmp" "$OUTDIR/vmlinuz"
mv "$WORK/initrd.gz" "$OUTDIR/initrd.gz.tmp" && mv "$OUTDIR/initrd.gz.tmp" "$OUTDIR/initrd.gz"
echo "$STAMP" >"$OUTDIR/stamp"
# Keep only the current kernel package in the cache.
find "$CACHE" -maxdepth 1 -name 'linux-image-*.deb' ! -name "$(basename "$DEB")" -delete
log "built $OUTDIR/vmlinuz ($KREL) and $OUTDIR/initrd.gz ($(du -k "$OUTDIR/initrd.gz" | cut -f1) KiB)"
