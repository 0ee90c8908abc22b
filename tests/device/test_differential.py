"""Differential tests: the same ring contents through the Python and the C datapath.

Hypothesis writes ring contents, valid and hostile, into two identical copies
of guest RAM (one per datapath) over two identical image files, kicks, runs
each datapath until it is quiet, and compares: guest RAM byte for byte (used
ring, status bytes, data), the image, broken or not with the same error
class and message, err and call eventfd counts, and last_avail_idx.

Both datapaths are driven from the test thread, one ``run`` at a time.  The
null engine completes synchronously, so every byte must match, used-ring
order included, and the contents may alias anything.  The other engines
complete in any order: there, each request gets its own buffers and sectors
(hostile structure stays), and used elements are compared as a set.  Once such
a ring breaks, the requests in flight at the break may or may not have
finished before it was seen: their buffers and the used ring may then differ,
and only there (``timing_dependent``).
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from inflight_support import DESC, HEADER
from ringutil import device_memory

from dataplane.device.c import address_of, pinned
from dataplane.device.datapath.base import Datapath, RingSetup
from dataplane.device.datapath.factory import open_datapath
from dataplane.device.disk import DEFAULT_BOUNCE_BYTES, Disk
from dataplane.device.inflight import queue_size_bytes
from dataplane.device.memory import GuestMemory
from dataplane.guest.ring import GuestRam
from dataplane.spec import blk, ring
from dataplane.spec.blk import CONFIG_WRITEBACK_OFFSET

ENGINES = ["null", "threads", "io_uring", "native"]
EXAMPLES = {"null": 400, "threads": 80, "io_uring": 80, "native": 60}
# The sanitizer run (test_sanitizers.py) scales the examples down.
SCALE = float(os.environ.get("DP_DIFFERENTIAL_SCALE", "1"))
# DP_DIFFERENTIAL_NO_SHRINK=1 reports the first failure as found (quicker when hunting bugs).
PHASES = (
    [p for p in Phase if p not in (Phase.shrink, Phase.explain)]
    if os.environ.get("DP_DIFFERENTIAL_NO_SHRINK")
    else list(Phase)
)

RAM_SIZE = 256 << 10
SECTORS = 128
SETTLE_TIMEOUT = 10.0

log = logging.getLogger("dataplane.test.differential")
log.disabled = True  # hostile rings break queues on purpose; Ring.error is compared instead


class TwinRam:
    """Allocates in copy ``a`` and writes both copies, so both datapaths see the same bytes."""

    def __init__(self, a: GuestRam, b: GuestRam) -> None:
        self.a, self.b = a, b
        self.gpa, self.size = a.gpa, a.size

    def alloc(self, n: int, align: int = 16) -> int | None:
        try:
            return self.a.alloc(n, align)
        except MemoryError:
            return None

    def write(self, gpa: int, data: bytes) -> None:
        """Write both copies; a part outside RAM (a hostile address) is dropped."""
        lo, hi = max(gpa, self.gpa), min(gpa + len(data), self.gpa + self.size)
        if lo < hi:
            self.a.write(lo, data[lo - gpa : hi - gpa])
            self.b.write(lo, data[lo - gpa : hi - gpa])


@dataclass
class Layout:
    """Where the ring lives in guest RAM, and what the test has published so far."""

    num: int
    desc: int
    avail: int
    used: int
    avail_idx: int
    hostility: int = 1  # 0: no ring-breaking input; 1: now and then; 2: often
    next_slot: int = 0
    next_sector: int = 0
    total: int = 0  # chains published over all rounds
    writable: list[tuple[int, int]] = field(default_factory=list)  # device-writable (gpa, len)
    last_sector_taken: bool = False


@dataclass
class Side:
    """One datapath with its own guest RAM, image file and eventfds."""

    dp: Datapath
    disk: Disk
    ram: GuestRam
    mem: GuestMemory
    image: str
    image_fd: int
    kick: int
    call: int
    err: int
    old_mems: list[GuestMemory] = field(default_factory=list)
    inflight: bytearray | None = None  # the C side's INFLIGHT_SHMFD area
    pinned: object = None


# -- building hostile ring contents -------------------------------------------------


def chance(draw, n: int) -> bool:
    """True once in ``n`` (sampled_from draws evenly; bounded integers favour their ends)."""
    return draw(st.sampled_from([True] + [False] * (n - 1)))


def out_of_ram(draw, ram: TwinRam) -> int:
    return draw(
        st.sampled_from(
            [0, ram.gpa - 16, ram.gpa + ram.size - 4, ram.gpa + ram.size, 2**64 - 8, 2**63]
        )
    )


def buffer_addr(draw, ram: TwinRam, n: int, aliasing: bool) -> int:
    """A fresh buffer, or (null engine only) any address in RAM, overlapping whatever is there."""
    if aliasing and chance(draw, 12):
        return draw(st.integers(ram.gpa, ram.gpa + ram.size - max(n, 1)))
    gpa = ram.alloc(max(n, 1), draw(st.sampled_from([1, 2, 16, 512])))
    return out_of_ram(draw, ram) if gpa is None else gpa


def sector_range(draw, lay: Layout, count: int, aliasing: bool) -> int:
    """The sector a request starts at: hostile sometimes; else, without aliasing, fresh."""
    if chance(draw, 8):
        sector = draw(st.sampled_from([SECTORS - 1, SECTORS, 2**63, 2**64 - 1]))
        if sector == SECTORS - 1 and count <= 1 and not aliasing:
            # The last sector is a real one: without aliasing, one request gets it at most.
            if lay.last_sector_taken:
                return SECTORS
            lay.last_sector_taken = True
        return sector
    if aliasing:
        return draw(st.integers(0, SECTORS))
    start = lay.next_sector
    if start + count > SECTORS - 1:  # the last sector is the hostile draws' (above)
        return SECTORS  # out of fresh sectors: an IOERR
    lay.next_sector += max(count, 1)
    return start


def draw_buffers(draw, ram: TwinRam, lay: Layout, aliasing: bool, hdr_len: int) -> list[list[int]]:
    """One request's buffers as [addr, length, writable] in chain order."""
    rtype = draw(
        st.sampled_from(
            [blk.VIRTIO_BLK_T_IN] * 3
            + [blk.VIRTIO_BLK_T_OUT] * 3
            + [blk.VIRTIO_BLK_T_FLUSH, blk.VIRTIO_BLK_T_GET_ID, blk.VIRTIO_BLK_T_DISCARD]
            + [blk.VIRTIO_BLK_T_WRITE_ZEROES, 7, 0xFFFFFFFF]
        )
    )
    # Now and then 8 KiB: past size_max when bounce memory is small (the disk's bounce_bytes).
    nsec = 16 if chance(draw, 10) else draw(st.integers(0, 4))
    length = nsec * 512 + (draw(st.integers(1, 511)) if chance(draw, 10) else 0)
    sector = sector_range(draw, lay, nsec, aliasing)
    hdr = buffer_addr(draw, ram, 16, aliasing)
    ram.write(hdr, blk.HEADER.pack(rtype, draw(st.integers(0, 2**32 - 1)), sector))
    bufs = []
    if hdr_len > 8 and draw(st.booleans()):
        cut = draw(st.integers(1, hdr_len - 1))
        bufs += [[hdr, cut, 0], [hdr + cut, hdr_len - cut, 0]]
    else:
        bufs.append([hdr, hdr_len, 0])

    def data(n: int, writable: int, content: bytes = b"") -> None:
        parts = draw(st.integers(1, 3)) if n >= 3 else 1
        cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=parts - 1))) if n > 1 else []
        for a, b in zip([0, *cuts], [*cuts, n], strict=True):
            gpa = buffer_addr(draw, ram, b - a, aliasing)
            ram.write(gpa, content[a:b])
            bufs.append([gpa, b - a, writable])

    if rtype == blk.VIRTIO_BLK_T_OUT and length:
        data(length, 0, draw(st.binary(min_size=length, max_size=length)))
    elif rtype in (blk.VIRTIO_BLK_T_DISCARD, blk.VIRTIO_BLK_T_WRITE_ZEROES):
        count = draw(st.integers(0, 8))
        seg_sector = sector_range(draw, lay, count, aliasing)
        flags = draw(st.sampled_from([0, 0, 1, 2]))
        seg = blk.DWZ_SEGMENT.pack(seg_sector % 2**64, count, flags)
        data(draw(st.sampled_from([16, 16, 16, 8, 32])), 0, seg * 2)
    elif rtype == blk.VIRTIO_BLK_T_GET_ID:
        data(draw(st.integers(1, 40)), 1)
    elif rtype == blk.VIRTIO_BLK_T_IN and length:
        data(length, 1)
    status_in_data = bufs[-1][2] and draw(st.booleans())
    if status_in_data:
        bufs[-1][1] += 1  # the status byte is the last byte of the data buffer
    else:
        bufs.append([buffer_addr(draw, ram, 1, aliasing), 1, 1])
    return bufs


MUTATIONS = [
    "none",
    "short_header",
    "no_status",
    "readable_after_writable",
    "out_of_ram",
    "zero_length",
    "bad_next",
    "loop",
    "indirect_in_chain",
    "indirect_with_next",
    "indirect_bad_length",
    "indirect_table_out_of_ram",
    "head_out_of_range",
]


def draw_chain(draw, ram: TwinRam, lay: Layout, aliasing: bool, indirect_ok: bool) -> int:
    """Write one request's chain (direct or through an indirect table); return its head."""
    none = {0: 0, 1: 8, 2: 1}[lay.hostility] * len(MUTATIONS)
    mutation = draw(st.sampled_from(["none"] * none + MUTATIONS)) if lay.hostility else "none"
    hdr_len = draw(st.integers(0, 15)) if mutation == "short_header" else 16
    bufs = draw_buffers(draw, ram, lay, aliasing, hdr_len)
    if mutation == "no_status":
        bufs = [[a, n, 0] for a, n, _ in bufs]
    elif mutation == "readable_after_writable":
        bufs.append([buffer_addr(draw, ram, 8, aliasing), 8, 0])
    elif mutation == "out_of_ram":
        bufs[draw(st.integers(0, len(bufs) - 1))][0] = out_of_ram(draw, ram)
    elif mutation == "zero_length":
        at = draw(st.integers(0, len(bufs)))
        bufs.insert(at, [draw(st.integers(0, 2**64 - 1)), 0, draw(st.integers(0, 1))])
    descs = [
        [a, n, (ring.VRING_DESC_F_WRITE if w else 0) | ring.VRING_DESC_F_NEXT, 0]
        for a, n, w in bufs
    ]
    descs[-1][2] &= ~ring.VRING_DESC_F_NEXT
    lay.writable += [(a % 2**64, n) for a, n, f, _ in descs if f & ring.VRING_DESC_F_WRITE]
    if mutation == "indirect_in_chain":
        descs[draw(st.integers(0, len(descs) - 1))][2] |= ring.VRING_DESC_F_INDIRECT
    if mutation == "loop":
        descs[-1][2] |= ring.VRING_DESC_F_NEXT

    # Indirect without the feature is one more hostile case (UnexpectedIndirect).
    use_indirect = mutation.startswith("indirect_") or draw(
        st.booleans() if indirect_ok or lay.hostility == 2 else st.just(False)
    )
    # Descriptors in use are not reused, except (null engine only) now and then.
    reuse = aliasing and chance(draw, 8)
    if not use_indirect and not reuse and len(descs) > lay.num - lay.next_slot:
        use_indirect = True
    if use_indirect:
        if not reuse and lay.next_slot >= lay.num:
            return -1
        for i, d in enumerate(descs):
            d[3] = i + 1
        if mutation == "loop":
            descs[-1][3] = 0
        if mutation == "bad_next":
            descs[draw(st.integers(0, len(descs) - 1))][3] = len(descs) + draw(st.integers(0, 3))
            descs[-1][2] |= ring.VRING_DESC_F_NEXT
        table = buffer_addr(draw, ram, 16 * len(descs), aliasing)
        ram.write(table, b"".join(ring.DESC.pack(d[0] % 2**64, *d[1:]) for d in descs))
        head_flags = ring.VRING_DESC_F_INDIRECT
        length = 16 * len(descs)
        if mutation == "indirect_with_next":
            head_flags |= ring.VRING_DESC_F_NEXT
        elif mutation == "indirect_bad_length":
            length = draw(st.sampled_from([0, 8, length + 8, 16 * (lay.num + 1)]))
        elif mutation == "indirect_table_out_of_ram":
            table = out_of_ram(draw, ram)
        head = lay.next_slot % lay.num
        lay.next_slot += 1
        write_desc(ram, lay, head, table, length, head_flags, 0)
    else:
        slots = [(lay.next_slot + i) % lay.num for i in range(len(descs))]
        lay.next_slot += len(descs)
        for i, d in enumerate(descs):
            d[3] = slots[(i + 1) % len(slots)]
        if mutation == "bad_next":
            descs[draw(st.integers(0, len(descs) - 1))][3] = lay.num + draw(st.integers(0, 9))
            descs[-1][2] |= ring.VRING_DESC_F_NEXT
        for slot, d in zip(slots, descs, strict=True):
            write_desc(ram, lay, slot, *d)
        head = slots[0]
    if mutation == "head_out_of_range":
        head = lay.num + draw(st.integers(0, 100))
    return head


def write_desc(ram: TwinRam, lay: Layout, i: int, addr: int, n: int, flags: int, nxt: int) -> None:
    ram.write(lay.desc + 16 * i, ring.DESC.pack(addr % 2**64, n, flags, nxt))


def draw_round(draw, ram: TwinRam, lay: Layout, aliasing: bool, indirect_ok: bool) -> None:
    """Publish a batch of chains, sometimes with hostile avail-ring fields."""
    room = lay.num if aliasing else lay.num - lay.total
    lay.next_slot = 0
    heads = []
    count = 0 if room <= 0 or chance(draw, 10) else draw(st.integers(1, room))
    for _ in range(count):
        head = draw_chain(draw, ram, lay, aliasing, indirect_ok)
        if head < 0:
            break
        heads.append(head)
    for h in heads:
        ram.write(lay.avail + 4 + 2 * (lay.avail_idx % lay.num), ring.U16.pack(h % 2**16))
        lay.avail_idx = (lay.avail_idx + 1) & 0xFFFF
    lay.total += len(heads)
    idx = lay.avail_idx
    if lay.hostility and chance(draw, 40 // lay.hostility):
        idx = (idx + lay.num + draw(st.integers(1, 2**16 - 2 * lay.num - 2))) & 0xFFFF
    ram.write(lay.avail + 2, ring.U16.pack(idx))
    ram.write(
        lay.avail, ring.U16.pack(draw(st.sampled_from([0, 0, ring.VRING_AVAIL_F_NO_INTERRUPT])))
    )
    used_event = draw(st.one_of(st.integers(0, 0xFFFF), st.just(lay.avail_idx)))
    ram.write(lay.avail + 4 + 2 * lay.num, ring.U16.pack(used_event))


# -- running both datapaths ------------------------------------------------------------


def open_side(kind: str, engine: str, disk: Disk, ram: GuestRam, image: bytes, depth: int) -> Side:
    fd_, path = tempfile.mkstemp(prefix="dp-diff-", suffix=".img")
    os.write(fd_, image)
    os.close(fd_)
    image_fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    dp = open_datapath(kind, disk, engine, image_fd, depth, [0], log)
    kick, call, err = (os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(3))
    mem = device_memory(ram)
    dp.set_memory(mem)
    return Side(dp, disk, ram, mem, path, image_fd, kick, call, err)


def check_inflight(side: Side, lay: Layout, aliasing: bool) -> None:
    """The C side tracks its ring in a fresh inflight area (the Python reference tracks
    none): once it settled on a ring that did not break, the area records the used->idx
    the guest sees and, where every request had a head of its own, nothing in flight.
    (A guest that makes a head available again while it is in flight, as aliasing rings
    and hostile ones do, loses its record: the batch list of csrc/device/dp_inflight.h, as
    libvhost-user's, links a head once; after a reconnect that guest's request may run
    again, which costs that guest alone.)"""
    area = side.inflight
    if area is None or side.dp.is_broken(0):
        return
    _, version, desc_num, _, used_idx = HEADER.unpack_from(area)
    used = ring.U16.unpack_from(side.ram.view, lay.used - side.ram.gpa + 2)[0]
    assert (version, desc_num, used_idx) == (1, lay.num, used)
    if not aliasing and lay.hostility == 0:
        flags = [area[HEADER.size + DESC.size * h] for h in range(lay.num)]
        assert flags == [0] * lay.num, f"heads left in flight: {flags}"


def start(side: Side, lay: Layout, base: int, event_idx: bool, indirect: bool) -> None:
    infl = {}
    if side.inflight is not None:
        side.pinned = pinned(side.inflight)
        infl = {"inflight_addr": address_of(side.pinned), "inflight_desc_num": lay.num}
    setup = RingSetup(
        index=0,
        num=lay.num,
        desc_uva=side.ram.uva_of(lay.desc),
        avail_uva=side.ram.uva_of(lay.avail),
        used_uva=side.ram.uva_of(lay.used),
        last_avail_idx=base,
        kick_fd=os.dup(side.kick),
        call_fd=os.dup(side.call),
        err_fd=os.dup(side.err),
        event_idx=event_idx,
        indirect=indirect,
        **infl,
    )
    side.dp.start_ring(setup)


def settle(side: Side) -> None:
    """Run the datapath until nothing is in flight and no ring has work left.

    Then once more with a timeout: a datapath turns kicks back on only when
    it is about to sleep, and the last busy run may have stopped short of it.
    """
    side.dp.run(0)
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while side.dp.busy():
        assert time.monotonic() < deadline, f"{side.dp.kind} datapath never settled"
        side.dp.run(0.05)
    side.dp.run(0.001)


def counter(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def close_side(side: Side) -> None:
    side.dp.detach_ring(0)
    side.dp.close()
    side.mem.close()
    for m in side.old_mems:
        m.close()
    for fd in (side.kick, side.call, side.err, side.image_fd):
        os.close(fd)
    os.unlink(side.image)
    side.ram.close()


def snapshot(side: Side, lay: Layout, ordered: bool) -> dict:
    ram = bytearray(side.ram.view)
    if not ordered:
        start = lay.used - side.ram.gpa + 4
        elems = sorted(bytes(ram[start + 8 * i : start + 8 * i + 8]) for i in range(lay.num))
        ram[start : start + 8 * lay.num] = b"".join(elems)
    ring = side.dp.rings[0]
    with open(side.image, "rb") as f:
        image = f.read()
    return {
        "ram": bytes(ram),
        "image": image,
        "broken": side.dp.is_broken(0),
        "error": None if ring.error is None else (type(ring.error).__name__, str(ring.error)),
        "err_signals": counter(side.err),
        "call_signals": counter(side.call) if ordered else None,
        "last_avail_idx": side.dp.last_avail_idx(0),
    }


def timing_dependent(lay: Layout, gpa: int) -> list[range]:
    """RAM offsets whose bytes may differ once a ring broke on an engine that completes
    out of order: which requests in flight at the break finished before it was seen (their
    status, bounced read data, used element and used->idx written) depends on when the
    engine finished them.  Everywhere else RAM must still match: no write outside
    device-writable buffers and the used ring."""
    used = lay.used - gpa
    spans = [range(used, used + ring.used_ring_size(lay.num))]
    return spans + [range(a - gpa, a - gpa + n) for a, n in lay.writable]


def assert_same(py: dict, c: dict, round_no: int, tolerated: list[range] = ()) -> None:
    keys = ("error", "broken", "err_signals", "call_signals", "last_avail_idx", "image")
    for key in keys:
        assert py[key] == c[key], f"round {round_no}: {key}: {py[key]!r} (python) != {c[key]!r}"
    if py["ram"] != c["ram"]:
        diff = [i for i in range(len(py["ram"])) if py["ram"][i] != c["ram"][i]]
        diff = [i for i in diff if not any(i in r for r in tolerated)]
        if diff:
            pytest.fail(f"round {round_no}: guest RAM differs at offsets {diff[:16]} ...")


def differential(data, engine: str) -> None:
    draw = data.draw
    aliasing = engine == "null"
    num = draw(st.sampled_from([4, 8, 16]))
    event_idx, indirect = draw(st.booleans()), draw(st.booleans())
    base = draw(st.sampled_from([0, 0xFFFF - 1, 0xFFFF]) | st.integers(0, 0xFFFF))
    depth = draw(st.sampled_from([1, num, 4 * num])) if aliasing else 4 * num
    disk_args = {
        "sectors": SECTORS,
        "read_only": chance(draw, 4),
        "serial": draw(st.binary(max_size=20)),
        "align": draw(st.sampled_from([1, 1, 512])),
        "writeback": draw(st.booleans()),
        "queue_size": num,
        # Small: size_max (4 or 8 KiB) is within reach.  Only one request at a time then: C
        # makes a request wait for bounce memory where the Python reference (bouncing each
        # request on its own) does not, and the order of completions would differ.
        "bounce_bytes": (
            draw(st.sampled_from([DEFAULT_BOUNCE_BYTES, 16 << 10]))
            if depth == 1
            else DEFAULT_BOUNCE_BYTES
        ),
    }
    image = random.Random(draw(st.integers(0, 2**32))).randbytes(SECTORS * 512)
    a, b = GuestRam(RAM_SIZE), GuestRam(RAM_SIZE)
    ram = TwinRam(a, b)
    lay = Layout(
        num,
        desc=ram.alloc(ring.desc_table_size(num), 16),
        avail=ram.alloc(ring.avail_ring_size(num), 2),
        used=ram.alloc(ring.used_ring_size(num), 4),
        avail_idx=base,
        hostility=draw(st.sampled_from([0, 1, 1, 2])),
    )
    ram.write(lay.avail + 2, ring.U16.pack(base))
    ram.write(lay.used + 2, ring.U16.pack(base))
    tracked = draw(st.booleans())
    sides: list[Side] = []
    try:
        for kind, r in (("python", a), ("native", b)):
            sides.append(open_side(kind, engine, Disk(**disk_args), r, image, depth))
        if tracked:
            sides[1].inflight = bytearray(queue_size_bytes(num))
        for s in sides:
            start(s, lay, base, event_idx, indirect)
            settle(s)
        for round_no in range(draw(st.integers(1, 3))):
            draw_round(draw, ram, lay, aliasing, indirect)
            change = draw(st.sampled_from(["none", "none", "writeback", "memory"]))
            for s in sides:
                if change == "writeback":
                    s.disk.write_config(CONFIG_WRITEBACK_OFFSET, bytes([not s.disk.writeback]))
                    s.dp.set_writeback(s.disk.writeback)  # as IoThread.set_writeback does
                elif change == "memory":
                    s.old_mems.append(s.mem)
                    s.mem = device_memory(s.ram)
                    s.dp.set_memory(s.mem)
                os.eventfd_write(s.kick, 1)
                settle(s)
            py, c = (snapshot(s, lay, ordered=aliasing) for s in sides)
            check_inflight(sides[1], lay, aliasing)
            broken_unordered = py["broken"] and not aliasing
            assert_same(py, c, round_no, timing_dependent(lay, a.gpa) if broken_unordered else [])
            event(f"broken by {py['error'][0] if py['error'] else 'nothing'}")
            used = ring.U16.unpack_from(py["ram"], lay.used - a.gpa + 2)[0]
            event(f"used entries after a round: {min((used - base) & 0xFFFF, 8)}+")
        bases = [s.dp.detach_ring(0) for s in sides]
        assert bases[0] == bases[1], f"last_avail_idx after stop: python {bases[0]} != {bases[1]}"
    finally:
        for s in sides:
            close_side(s)
        if len(sides) < 2:
            for r in (a, b)[len(sides) :]:
                r.close()


def _agreement_test(engine: str):
    @settings(
        max_examples=max(1, int(EXAMPLES[engine] * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        phases=PHASES,
    )
    @given(data=st.data())
    def test(data) -> None:
        differential(data, engine)

    test.__name__ = f"test_python_and_native_agree_on_{engine}"
    return test


test_python_and_native_agree_on_null = _agreement_test("null")
test_python_and_native_agree_on_threads = _agreement_test("threads")
test_python_and_native_agree_on_io_uring = _agreement_test("io_uring")
test_python_and_native_agree_on_native = _agreement_test("native")


def test_length_overflow_breaks_both_alike():
    """LengthOverflow needs more than 4 GiB of buffers in RAM: sparse RAM, outside hypothesis."""
    a, b = GuestRam(5 << 30), GuestRam(5 << 30)
    ram = TwinRam(a, b)
    num = 8
    lay = Layout(num, ram.alloc(ring.desc_table_size(num)), ram.alloc(ring.avail_ring_size(num), 2),
                 ram.alloc(ring.used_ring_size(num), 4), avail_idx=0)  # fmt: skip
    big = 0xC0000000
    write_desc(ram, lay, 0, a.gpa, 16, ring.VRING_DESC_F_NEXT, 1)
    write_desc(ram, lay, 1, a.gpa, big, ring.VRING_DESC_F_WRITE | ring.VRING_DESC_F_NEXT, 2)
    write_desc(ram, lay, 2, a.gpa + big, big, ring.VRING_DESC_F_WRITE, 0)
    ram.write(lay.avail + 4, ring.U16.pack(0))
    ram.write(lay.avail + 2, ring.U16.pack(1))
    sides = []
    try:
        for kind, r in (("python", a), ("native", b)):
            sides.append(open_side(kind, "null", Disk(SECTORS, queue_size=num), r, b"", 4 * num))
            start(sides[-1], lay, 0, False, True)
            settle(sides[-1])
        errors = [(type(s.dp.rings[0].error).__name__, str(s.dp.rings[0].error)) for s in sides]
        assert (
            errors[0]
            == errors[1]
            == (
                "LengthOverflow",
                "device-writable length exceeds 2**32-1",
            )
        )
        assert [counter(s.err) for s in sides] == [1, 1]
    finally:
        for s in sides:
            close_side(s)
