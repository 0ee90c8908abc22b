#!/usr/bin/env bash
# The picture of docs/lifecycle.md: a request's round trip cut into its layers, for the null
# engine, the page cache and O_DIRECT, at QD1 and QD32, ours beside qemu-storage-daemon (whose
# inside is not stamped: its guest-side total only).  One `dataplane bench --layers` per
# engine and depth, then one picture of them all.
#   bench/layers.sh OUTDIR [IMAGE-DIR]   (IMAGE-DIR must allow O_DIRECT: not tmpfs; /var/tmp)
set -euo pipefail
OUT=${1:?usage: bench/layers.sh OUTDIR [IMAGE-DIR]}; DIR=${2:-/var/tmp}
mkdir -p "$OUT"; IMG=$(mktemp "$DIR/dp-layers.XXXX.img"); trap 'rm -f "$IMG"' EXIT
# Written, not sparse: O_DIRECT reads of a hole would never reach the disk.
dd if=/dev/zero of="$IMG" bs=1M count=256 oflag=direct conv=fsync status=none
DP=${DP:-.venv/bin/dataplane}
runs=()
for qd in 1 32; do
  for mode in null writeback none; do
    case $mode in
      null) args=(--aio null) ;;
      writeback) args=(--image "$IMG" --aio io_uring --cache writeback); cat "$IMG" > /dev/null ;;
      none) args=(--image "$IMG" --aio io_uring --cache none) ;;
    esac
    echo "== $mode qd=$qd"
    "$DP" bench "${args[@]}" --target ours --target qsd --rw randread --bs 4k --iodepth "$qd" \
      --runtime 3 --repeat 2 --json "$OUT/$mode-qd$qd.json" --layers "$OUT/$mode-qd$qd.png" \
      2>&1 | grep -E '^(target|ours|qsd) |written to'
    runs+=("$OUT/$mode-qd$qd.json")
  done
done
.venv/bin/python -m dataplane.guest.bench.layers_plot "$OUT/layers.png" "${runs[@]}"
