"""What the driver does: fio-like synthetic workloads or a replayed trace, split per queue.

Offsets are on a grid of ``bs``-sized blocks from ``--offset``.  Random
workloads without verify let every queue roam the whole range (like fio's
numjobs); sequential and verified workloads give each queue its own slice, so
that a block never has two requests in flight and verify knows what each
block must hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from dataplane.errors import UsageError
from dataplane.guest.bench.trace import SECTOR, Trace

RW_MODES = ("read", "write", "randread", "randwrite", "randrw")
MIN_BS = SECTOR
MAX_BS = 1 << 20
PAGE = 4096
VERIFY_MAX_BLOCKS = 1 << 28
REPLAY_TIMINGS = ("fast", "original")
NOTIFY_MODES = ("irq", "poll")


@dataclass(frozen=True)
class Workload:
    rw: str = "randread"
    rwmixread: int = 50
    bs: int = 4096
    iodepth: int = 1
    num_queues: int = 1
    runtime_s: float | None = 5.0
    ios: int | None = None
    offset: int = 0
    size: int | None = None
    verify: bool = False
    seed: int = 1
    replay: Trace | None = None
    replay_timing: str = "fast"
    notify: str = "irq"  # irq: sleep on the call eventfd; poll: suppress calls, busy-poll used
    buf_align: int = PAGE  # data buffers sit at a multiple of this, and of no larger power of 2

    def check(self) -> None:
        """Raise UsageError for any inconsistent choice that needs no device to detect."""
        if self.rw not in RW_MODES:
            raise UsageError(f"--rw {self.rw!r} is not one of {', '.join(RW_MODES)}")
        if not 0 <= self.rwmixread <= 100:
            raise UsageError(f"--rwmixread {self.rwmixread} must be between 0 and 100")
        if self.bs % SECTOR or not MIN_BS <= self.bs <= MAX_BS:
            raise UsageError(
                f"--bs {self.bs} must be a multiple of 512 from 512 to {MAX_BS} (1 MiB)"
            )
        if self.offset % SECTOR or (self.size is not None and self.size % SECTOR):
            raise UsageError("--offset and --size must be multiples of 512")
        if self.size is not None and self.size < self.bs:
            raise UsageError(f"--size {self.size} is smaller than one block (--bs {self.bs})")
        if self.runtime_s is not None and self.runtime_s <= 0:
            raise UsageError("--runtime must be positive")
        if self.replay_timing not in REPLAY_TIMINGS:
            raise UsageError(f"--replay-timing must be one of {', '.join(REPLAY_TIMINGS)}")
        if self.notify not in NOTIFY_MODES:
            raise UsageError(f"--notify must be one of {', '.join(NOTIFY_MODES)}")
        if self.buf_align < 1 or self.buf_align & (self.buf_align - 1) or self.buf_align > PAGE:
            raise UsageError(
                f"--buf-align {self.buf_align} must be a power of two from 1 to {PAGE}"
            )
        if self.replay is not None and self.verify:
            raise UsageError("--verify does not apply to --replay (a trace has no known contents)")

    @property
    def read_percent(self) -> int:
        if self.rw in ("read", "randread"):
            return 100
        if self.rw in ("write", "randwrite"):
            return 0
        return self.rwmixread

    @property
    def random(self) -> bool:
        return self.rw.startswith("rand")

    @property
    def buf_offset(self) -> int:
        """Where a slot's data starts in its page-aligned stride: exactly ``buf_align`` aligned."""
        return 0 if self.buf_align == PAGE else self.buf_align

    @property
    def buf_stride(self) -> int:
        """Bytes per request slot buffer: a page multiple that holds the offset and the data."""
        longest = self.replay.max_data_length() if self.replay is not None else self.bs
        longest += self.buf_offset
        return max(PAGE, (longest + PAGE - 1) // PAGE * PAGE)

    def describe(self) -> str:
        if self.replay is not None:
            what = f"replay {self.replay.path.name} ({len(self.replay)} requests, "
            what += f"{self.replay_timing} timing)"
        else:
            mix = f" rwmixread={self.rwmixread}" if self.rw == "randrw" else ""
            what = f"{self.rw}{mix} bs={_size_text(self.bs)}"
        if self.ios is not None:
            limit = f"{self.ios} ios"
        elif self.runtime_s is not None:
            limit = f"{self.runtime_s:g} s"
        else:
            limit = "whole trace"
        v = " verify" if self.verify else ""
        return (
            f"{what} iodepth={self.iodepth} queues={self.num_queues} {limit}{v}; "
            f"driver: notify={self.notify} buf-align={self.buf_align}"
        )

    def byte_range(self, capacity: int) -> tuple[int, int]:
        """(offset, size) in bytes on a device of ``capacity`` bytes."""
        size = capacity - self.offset if self.size is None else self.size
        if self.offset >= capacity or size <= 0 or self.offset + size > capacity:
            raise UsageError(
                f"--offset {self.offset} / --size {self.size} reach past the device's "
                f"{capacity} bytes"
            )
        return self.offset, size


@dataclass
class QueueWork:
    """One queue's share: a block range (synthetic) or its trace ops, and its limits."""

    index: int
    start_sector: int = 0
    nblocks: int = 0
    max_ios: int = 0  # 0: no limit
    seed: int = 0
    ops: list[tuple[int, int, int, int]] | None = None  # (t_ns, sector, len, kind)


def _share(total: int, parts: int, i: int) -> int:
    return total // parts + (1 if i < total % parts else 0)


def split(w: Workload, capacity: int) -> list[QueueWork]:
    """Each queue's work on a device of ``capacity`` bytes (UsageError if it does not fit)."""
    n = w.num_queues
    works = [
        QueueWork(i, max_ios=_share(w.ios, n, i) if w.ios is not None else 0, seed=w.seed + i)
        for i in range(n)
    ]
    if w.replay is not None:
        return _split_trace(w, works, capacity)
    offset, size = w.byte_range(capacity)
    blocks = size // w.bs
    per_queue_slices = w.verify or not w.random
    for i, qw in enumerate(works):
        if per_queue_slices:
            first = blocks * i // n
            qw.nblocks = blocks * (i + 1) // n - first
        else:
            first, qw.nblocks = 0, blocks
        qw.start_sector = (offset + first * w.bs) // SECTOR
        if qw.nblocks < (2 * w.iodepth if w.verify else 1):
            raise UsageError(
                f"the range of {size} bytes is too small for {n} queue(s) at iodepth "
                f"{w.iodepth}{' with --verify' if w.verify else ''}: raise --size"
            )
        if w.verify and qw.nblocks > VERIFY_MAX_BLOCKS:
            raise UsageError(f"--verify tracks at most {VERIFY_MAX_BLOCKS} blocks: lower --size")
    return works


def _split_trace(w: Workload, works: list[QueueWork], capacity: int) -> list[QueueWork]:
    t = w.replay
    assert t is not None
    end = t.end_sector() * SECTOR
    if end > capacity:
        raise UsageError(f"trace {t.path} reaches byte {end}, past the device's {capacity} bytes")
    for qw in works:
        qw.ops = []
    for t_ns, q, kind, sector, length in zip(
        t.t_ns, t.queue, t.kind, t.sector, t.length, strict=True
    ):
        ops = works[q % w.num_queues].ops
        assert ops is not None
        ops.append((t_ns, sector, length, kind))
    return works


def _size_text(n: int) -> str:
    for unit, shift in (("M", 20), ("k", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)
