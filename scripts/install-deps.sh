#!/usr/bin/env bash
# Installs the Debian 12 system packages dataplane needs to build, test and benchmark.
# Run as root. Idempotent: does nothing when everything is present.
set -euo pipefail
pkgs=(
    liburing-dev libaio-dev qemu-system-x86 busybox-static fio util-linux cpio gcc
    # the seccomp allow-lists (csrc/device/dp_sandbox.c, through libseccomp)
    libseccomp-dev
    # the libFuzzer target (scripts/fuzz.sh): clang-14, its runtime, llvm-14's symbolizer
    clang-14 libclang-rt-14-dev llvm-14
    # remote engines: the client libraries, and real servers for their tests (qemu-nbd and
    # nbdkit for NBD, a throwaway cluster by scripts/ceph-dev.sh for RBD)
    libnbd-dev nbdkit qemu-utils librbd-dev librados-dev
    ceph-mon ceph-mgr ceph-osd ceph-common
    # qemu-storage-daemon's rbd driver (block-rbd.so), the peer of our RBD engine in bench
    qemu-block-extra
    # a real host: systemd-socket-activate and systemd-analyze, libvirtd and virsh, promtool
    systemd libvirt-daemon-system libvirt-clients prometheus
    # scripts/qemu-qtest.sh: QEMU's vhost-user-blk qtest, built from Debian's qemu source
    dpkg-dev meson ninja-build pkg-config libglib2.0-dev libpixman-1-dev libfdt-dev zlib1g-dev
    seabios
)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: need root to install: ${missing[*]} (run as root or with sudo)" >&2
        exit 2
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# QEMU 10.0.2 from bookworm-backports, unpacked beside 7.2 (the guest tests run on both)
"$(dirname "$0")/install-qemu10.sh"
