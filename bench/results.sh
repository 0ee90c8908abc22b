#!/usr/bin/env bash
# Reproduce the tables of bench/RESULTS.md: three back ends (null, page cache, O_DIRECT) x three
# workloads, targets ours, qsd and fio, interleaved over --repeat rounds.
#
#   bench/results.sh OUTDIR [extra dataplane bench arguments...]
#
# Environment: DATAPLANE (default .venv/bin/dataplane), RUNTIME (5), REPEAT (2),
# SHM_IMAGE (/dev/shm/dp-bench.img), DIRECT_IMAGE (/tmp/dp-bench/direct.img), TARGETS,
# BACKENDS (null pagecache direct).
set -euo pipefail
out=${1:?usage: bench/results.sh OUTDIR [dataplane bench args...]}
shift
DATAPLANE=${DATAPLANE:-.venv/bin/dataplane}
RUNTIME=${RUNTIME:-5}
REPEAT=${REPEAT:-2}
SHM_IMAGE=${SHM_IMAGE:-/dev/shm/dp-bench.img}
DIRECT_IMAGE=${DIRECT_IMAGE:-/tmp/dp-bench/direct.img}
TARGETS=${TARGETS:---target ours --target qsd --target fio}
mkdir -p "$out" "$(dirname "$DIRECT_IMAGE")"

# 1 GiB images, fully written, so reads hit real blocks rather than holes.
for img in "$SHM_IMAGE" "$DIRECT_IMAGE"; do
    if [ "$(stat -c %s "$img" 2>/dev/null || echo 0)" != 1073741824 ]; then
        head -c 1G /dev/urandom > "$img"
    fi
done
sync

declare -A backends=(
    [null]="--aio null"
    [pagecache]="--image $SHM_IMAGE --cache writeback --aio io_uring"
    [direct]="--image $DIRECT_IMAGE --cache none --aio io_uring"
)
declare -A workloads=(
    [randread-qd1]="--rw randread --iodepth 1"
    [randread-qd32]="--rw randread --iodepth 32"
    [randrw-qd32]="--rw randrw --rwmixread 50 --iodepth 32"
)
for b in ${BACKENDS:-null pagecache direct}; do
    for w in randread-qd1 randread-qd32 randrw-qd32; do
        # shellcheck disable=SC2086
        cmd=("$DATAPLANE" bench $TARGETS ${backends[$b]} ${workloads[$w]} --bs 4k \
             --num-queues 1 --runtime "$RUNTIME" --repeat "$REPEAT" --json "$out/$b-$w.json" "$@")
        echo "\$ ${cmd[*]}"
        # Progress and errors go to a file per row; a failed row is reported and the rest run.
        "${cmd[@]}" 2> "$out/$b-$w.err" || echo "FAILED (exit $?): see $out/$b-$w.err"
        echo
    done
done
