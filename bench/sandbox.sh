#!/usr/bin/env bash
# The sandbox's cost: two `serve` of this tree side by side, --sandbox off and --sandbox on,
# each on its own socket, one `dataplane bench` driving both (socket:PATH targets, interleaved
# rounds), on the null engine and on the page cache (io_uring, cache=writeback, image in
# /dev/shm), at QD1 and QD32 with an interrupt-driven driver.
#   bench/sandbox.sh OUTDIR        (REPEAT=N rounds, default 5; QDS="1 32"; FIRST=on: the
#                                   sandboxed server is the first target, the ratios' base)
set -euo pipefail
OUT=${1:?usage: bench/sandbox.sh OUTDIR}
mkdir -p "$OUT"; D=$(mktemp -d /dev/shm/sb.XXXX)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; rm -rf "$D"' EXIT
for engine in null pagecache; do
  for mode in off on; do
    img="$D/$engine-$mode.img"; truncate -s 1G "$img"
    args=(--aio null)
    [ $engine = pagecache ] && args=(--aio io_uring --cache writeback)
    .venv/bin/python -m dataplane serve --socket "$D/$engine-$mode.sock" --image "$img" \
      "${args[@]}" --sandbox $mode > "$OUT/$engine-$mode-serve.log" 2>&1 &
    PIDS+=($!)
  done
done
for s in null-off null-on pagecache-off pagecache-on; do
  for i in $(seq 100); do [ -S "$D/$s.sock" ] && break; sleep 0.2; done
done
for engine in null pagecache; do
  for qd in ${QDS:-1 32}; do
    a=off b=on; [ "${FIRST:-off}" = on ] && a=on b=off
    echo "== $engine qd=$qd: socket:$engine-$a.sock (sandbox $a) vs socket:$engine-$b.sock ($b)"
    .venv/bin/python -m dataplane bench --target "socket:$D/$engine-$a.sock" \
      --target "socket:$D/$engine-$b.sock" --iodepth "$qd" --notify irq --runtime 3 \
      --repeat "${REPEAT:-5}" --json "$OUT/$engine-qd$qd.json" 2>&1 | tail -8
  done
done
grep -h "sandbox" "$OUT"/*-on-serve.log | sort | uniq -c
