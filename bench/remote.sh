#!/usr/bin/env bash
# The remote-disk rows of bench/RESULTS.md: 4 KiB randread and randrw 50/50 at QD1 and QD32 on
# one queue, `dataplane serve` with its defaults beside qemu-storage-daemon on the same disk
# (QEMU's nbd and rbd block drivers) and fio's own client engine (nbd, rbd).
#
#   bench/remote.sh OUTDIR [extra dataplane bench arguments...]
#   bench/summarize.py OUTDIR/randread randread; bench/summarize.py OUTDIR/randrw randrw
#
# NBD: qemu-nbd serves a 1 GiB image of random data on tmpfs over a UNIX socket (writeback
# cache, multi-conn).  RBD: a 1 GiB image, written through once, on the cluster of
# scripts/ceph-dev.sh in CEPH_DIR (started here, and stopped after, when CEPH_DIR is unset).
# Environment: DATAPLANE (.venv/bin/dataplane), RUNTIME (3), REPEAT (3), DISKS ("nbd rbd").
set -euo pipefail
out=${1:?usage: bench/remote.sh OUTDIR [dataplane bench args...]}
shift
DATAPLANE=${DATAPLANE:-.venv/bin/dataplane}
RUNTIME=${RUNTIME:-3}
REPEAT=${REPEAT:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out/randread" "$out/randrw"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -n "${own_ceph:-}" ]; then bash "$here/scripts/ceph-dev.sh" stop "$own_ceph"; fi
}
trap cleanup EXIT

run() { # run NAME BENCH-ARGS...
    local name=$1
    shift
    for rw in randread randrw; do
        for qd in 1 32; do
            cmd=("$DATAPLANE" bench "$@" --rw "$rw" --rwmixread 50 --bs 4k --num-queues 1
                 --iodepth "$qd" --runtime "$RUNTIME" --repeat "$REPEAT"
                 --json "$out/$rw/$name-qd$qd.json")
            echo "\$ ${cmd[*]}"
            "${cmd[@]}" 2> "$out/$rw/$name-qd$qd.err" \
                || echo "FAILED (exit $?): see $out/$rw/$name-qd$qd.err"
            echo
        done
    done
}

for disk in ${DISKS:-nbd rbd}; do
    targets=(--target ours --target qsd --target fio)
    if [ "$disk" = nbd ]; then
        shm=$(mktemp -d /dev/shm/dp-remote.XXXXXX)
        head -c 1G /dev/urandom > "$shm/nbd.img"
        qemu-nbd --format=raw --export-name=disk --persistent --shared=8 --cache=writeback \
            --discard=unmap --socket "$shm/nbd.sock" "$shm/nbd.img" &
        pids+=($!)
        while [ ! -S "$shm/nbd.sock" ]; do sleep 0.1; done
        run nbd --image "nbd+unix:///disk?socket=$shm/nbd.sock" "${targets[@]}" "$@"
        kill "${pids[-1]}"
        wait "${pids[-1]}" 2>/dev/null || true
        rm -rf "$shm"
    else
        dir=${CEPH_DIR:-}
        if [ -z "$dir" ]; then
            own_ceph=$out/ceph
            dir=$own_ceph
            bash "$here/scripts/ceph-dev.sh" start "$dir"
        fi
        export CEPH_CONF=$dir/ceph.conf
        name=bench-$$
        rbd create --size 1G "rbd/$name"
        rbd bench --io-type write --io-size 4M --io-total 1G --io-pattern seq "rbd/$name" \
            > /dev/null
        run rbd --image "rbd:rbd/$name" "${targets[@]}" "$@"
        rbd rm --no-progress "rbd/$name"
    fi
done
