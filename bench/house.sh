#!/usr/bin/env bash
# Two builds of dataplane side by side on the null engine: each tree's `serve --aio null` on
# its own socket, one `dataplane bench` driving both (socket:PATH targets, interleaved rounds),
# at QD1 and QD32 with an interrupt-driven and a polling driver, once with each tree's driver.
#   bench/house.sh OUTDIR AFTER-TREE BEFORE-TREE   (each tree a checkout with its .venv built)
# Narrower runs: QDS="32 1" NOTIFY=irq DRIVERS=after REPEAT=7 bench/house.sh ...
set -euo pipefail
OUT=${1:?usage: bench/house.sh OUTDIR AFTER-TREE BEFORE-TREE}; AFTER=${2:?after tree}
BEFORE=${3:?before tree}
mkdir -p "$OUT"; D=$(mktemp -d /dev/shm/hb.XXXX)
truncate -s 1G "$D/before.img" "$D/after.img"
(cd "$BEFORE" && exec .venv/bin/python -m dataplane serve --socket "$D/before.sock" --image "$D/before.img" --aio null) > "$OUT/before-serve.log" 2>&1 &
B=$!
(cd "$AFTER" && exec .venv/bin/python -m dataplane serve --socket "$D/after.sock" --image "$D/after.img" --aio null) > "$OUT/after-serve.log" 2>&1 &
A=$!
trap 'kill $A $B 2>/dev/null; rm -rf "$D"' EXIT
for i in $(seq 50); do [ -S "$D/before.sock" ] && [ -S "$D/after.sock" ] && break; sleep 0.2; done
for qd in ${QDS:-1 32}; do
  for notify in ${NOTIFY:-irq poll}; do
    for drv in ${DRIVERS:-after before}; do
      tree=$AFTER; [ $drv = before ] && tree=$BEFORE
      echo "== driver=$drv qd=$qd notify=$notify"
      (cd "$tree" && .venv/bin/python -m dataplane bench --target "socket:$D/before.sock" --target "socket:$D/after.sock" \
        --iodepth $qd --notify $notify --runtime 3 --repeat "${REPEAT:-3}" --json "$OUT/d$drv-qd$qd-$notify.json") 2>&1 | tail -8
    done
  done
done
