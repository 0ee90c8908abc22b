"""pytest-benchmark micro-benchmarks of the ring-replay driver's own per-request costs.

Run with ``.venv/bin/pytest bench/ --benchmark-only`` (they are not part of the test suite).
"""

from __future__ import annotations

from pathlib import Path

from dataplane.guest.bench import hist
from dataplane.guest.bench.trace import TraceWriter
from dataplane.guest.clib import ffi, lib

SECTORS = 8  # one 4 KiB block


def _block():
    buf = ffi.new("uint8_t[]", 512 * SECTORS)
    return buf, int(ffi.cast("uintptr_t", buf))


def test_stamp_4k(benchmark) -> None:
    """--verify's cost per written 4 KiB block."""
    _buf, addr = _block()

    def stamp() -> None:
        for i in range(SECTORS):
            lib.dp_drv_stamp(addr + 512 * i, 1000 + i, 7)

    benchmark(stamp)


def test_check_4k(benchmark) -> None:
    """--verify's cost per read 4 KiB block."""
    _buf, addr = _block()
    fs, fg = ffi.new("uint64_t *"), ffi.new("uint64_t *")
    for i in range(SECTORS):
        lib.dp_drv_stamp(addr + 512 * i, 1000 + i, 7)

    def check() -> int:
        return sum(lib.dp_drv_check(addr + 512 * i, 1000 + i, 7, fs, fg) for i in range(SECTORS))

    assert benchmark(check) == 0


def test_trace_record(benchmark, tmp_path: Path) -> None:
    """What ``dataplane serve --record`` adds per request."""
    with TraceWriter(tmp_path / "t.trace") as w:
        benchmark(w.record, 0, 0, 2048, 4096)


def test_percentiles(benchmark) -> None:
    h = [0] * hist.BUCKETS
    for v in range(1, 100_000, 7):
        h[lib.dp_hist_index(v * 100)] += 1
    benchmark(lambda: [hist.percentile(h, p) for p in (50, 99, 99.9)])
