#!/usr/bin/env bash
# Dirty logging's cost (issue 16): 4 KiB random reads on one queue, ours without and with
# the bench playing a migrating QEMU (--dirty-log both: SET_LOG_BASE, LOG_ALL on, the used
# rings logged), side by side in interleaved rounds, on the null engine and a page-cached
# image, at QD1 and QD32 (interrupt-driven driver) and QD32 with a polling driver.
#
#   bench/dirty_log.sh OUTDIR [extra dataplane bench arguments...]
#
# Environment: DATAPLANE (.venv/bin/dataplane), RUNTIME (3), REPEAT (5), PC_IMAGE.  Each
# row's JSON goes to OUTDIR, with the load average before it in OUTDIR/load.txt.
set -euo pipefail
out=${1:?usage: bench/dirty_log.sh OUTDIR [dataplane bench args...]}
shift
DATAPLANE=${DATAPLANE:-.venv/bin/dataplane}
RUNTIME=${RUNTIME:-3}
REPEAT=${REPEAT:-5}
PC_IMAGE=${PC_IMAGE:-/var/tmp/dp-bench/dirty-log.img}
mkdir -p "$out" "$(dirname "$PC_IMAGE")"
if [ "$(stat -c %s "$PC_IMAGE" 2>/dev/null || echo 0)" != 268435456 ]; then
    head -c 256M /dev/urandom > "$PC_IMAGE"
fi
cat "$PC_IMAGE" > /dev/null # into the page cache
for backend in null pagecache; do
    case $backend in
        null) args=(--aio null) ;;
        pagecache) args=(--image "$PC_IMAGE" --cache writeback) ;;
    esac
    for row in "1 irq" "32 irq" "32 poll"; do
        read -r qd notify <<< "$row"
        name=$backend-qd$qd-$notify
        echo "$name: load $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/load.txt"
        "$DATAPLANE" bench "${args[@]}" --rw randread --bs 4k --iodepth "$qd" --notify "$notify" \
            --dirty-log both --runtime "$RUNTIME" --repeat "$REPEAT" --json "$out/$name.json" \
            "$@" | grep -E '^(ours|target)'
    done
done
