#!/usr/bin/env bash
# The "fast on every road" matrix of bench/RESULTS.md: 4 KiB random reads on one queue, for
# each back end x QD1/QD32 x --notify irq/poll x --buf-align 2/4096, every target side by
# side in interleaved rounds, `dataplane serve` with its defaults (no tuning flags).
#
#   bench/roads.sh OUTDIR [extra dataplane bench arguments...]
#
# Back ends: null (serve --aio null with the image at its default --cache none; qsd null-co),
# pagecache (an ext4 file, page-cached, --cache writeback), tmpfs (the same on tmpfs, QD32 only),
# direct (O_DIRECT on tmpfs, --cache none).  Targets: ours, qsd, limit, and fio where it reads
# a file.  Environment: DATAPLANE (.venv/bin/dataplane), RUNTIME (3), REPEAT (3), BACKENDS,
# OURS_CMD (another dataplane build as ours, for before/after figures).
set -euo pipefail
out=${1:?usage: bench/roads.sh OUTDIR [dataplane bench args...]}
shift
DATAPLANE=${DATAPLANE:-.venv/bin/dataplane}
RUNTIME=${RUNTIME:-3}
REPEAT=${REPEAT:-3}
PC_IMAGE=${PC_IMAGE:-/var/tmp/dp-bench/pagecache.img}
SHM_IMAGE=${SHM_IMAGE:-/dev/shm/dp-bench.img}
mkdir -p "$out" "$(dirname "$PC_IMAGE")"
for img in "$PC_IMAGE" "$SHM_IMAGE"; do
    if [ "$(stat -c %s "$img" 2>/dev/null || echo 0)" != 1073741824 ]; then
        head -c 1G /dev/urandom > "$img"
    fi
done
cat "$PC_IMAGE" > /dev/null # into the page cache
ours=()
[ -n "${OURS_CMD:-}" ] && ours=(--ours-cmd "$OURS_CMD")

declare -A backends=(
    [null]="--image $SHM_IMAGE --aio null --target ours --target qsd --target limit"
    [pagecache]="--image $PC_IMAGE --cache writeback --target ours --target qsd --target fio --target limit"
    [tmpfs]="--image $SHM_IMAGE --cache writeback --target ours --target qsd --target fio --target limit"
    [direct]="--image $SHM_IMAGE --cache none --target ours --target qsd --target fio --target limit"
)
for b in ${BACKENDS:-null pagecache tmpfs direct}; do
    for qd in 1 32; do
        [ "$b" = tmpfs ] && [ "$qd" = 1 ] && continue
        for notify in irq poll; do
            for align in 4096 2; do
                name="$b-qd$qd-$notify-align$align"
                # shellcheck disable=SC2086
                cmd=("$DATAPLANE" bench ${backends[$b]} --rw randread --bs 4k --num-queues 1
                     --iodepth "$qd" --notify "$notify" --buf-align "$align"
                     --runtime "$RUNTIME" --repeat "$REPEAT" --json "$out/$name.json"
                     "${ours[@]}" "$@")
                echo "\$ ${cmd[*]}"
                "${cmd[@]}" 2> "$out/$name.err" || echo "FAILED (exit $?): see $out/$name.err"
                echo
            done
        done
    done
done
