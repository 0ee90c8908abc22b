"""The words of ``dataplane serve --trace-requests N``: the request lifecycle, step by step.

Both datapaths narrate the first N requests a device pops, in the same words
for the same ring: the Python reference builds its lines here, the C path in
csrc/device/dp_narr.c and csrc/device/dp_loop_narr.c (keep them in step; the
differential test in tests/device/test_instrument.py compares the two).

A traced request's lines carry its number and queue (``trace #3 q0: ...``):

- ``pop``: avail idx and last_avail_idx, and the head popped;
- each descriptor: its index, gpa, length and flags (``desc[i]`` in the
  descriptor table, ``indirect[i]`` in an indirect table);
- the parsed header, and the I/O it became (or the status it got at once);
- ``submitted``: the batch it went to the engine with;
- ``complete``: the engine's result, the status byte, and the used element.

The queue's next used-ring publication after a traced completion is told
too (``trace q0: ...``): used->idx, and whether the guest is notified, and
why (EVENT_IDX's used_event and vring_need_event, or avail->flags'
VRING_AVAIL_F_NO_INTERRUPT).
"""

from __future__ import annotations

import logging
from typing import Protocol

from dataplane.device.io_request import IoRequest, Op
from dataplane.spec.blk import STATUS_NAMES, TYPE_NAMES
from dataplane.spec.ring import VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE


class BlkRequest(Protocol):
    """What the words need of a request (dataplane.device.blk.BlkRequest): a structural
    type keeps the words a leaf, which the C datapath imports without the Python reference's
    request parsing."""

    head: int
    rtype: int
    sector: int
    status: int
    used_len: int
    bounce_len: int
    io: IoRequest | None


_FLAG_NAMES = (
    (VRING_DESC_F_NEXT, "NEXT"),
    (VRING_DESC_F_WRITE, "WRITE"),
    (VRING_DESC_F_INDIRECT, "INDIRECT"),
)
_KNOWN_FLAGS = VRING_DESC_F_NEXT | VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT
_OP_NAMES = {
    Op.READ: "read",
    Op.WRITE: "write",
    Op.FLUSH: "flush",
    Op.DISCARD: "discard",
    Op.WRITE_ZEROES: "write-zeroes",
}


def request_prefix(seq: int, queue: int) -> str:
    return f"trace #{seq} q{queue}: "


def queue_prefix(queue: int) -> str:
    return f"trace q{queue}: "


def desc_flags(flags: int) -> str:
    """``NEXT|WRITE``; unknown bits in hex; ``-`` for none."""
    parts = [name for bit, name in _FLAG_NAMES if flags & bit]
    if flags & ~_KNOWN_FLAGS:
        parts.append(f"{flags & ~_KNOWN_FLAGS:#x}")
    return "|".join(parts) or "-"


def type_name(rtype: int) -> str:
    return TYPE_NAMES.get(rtype, "unknown")


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, "?")


# -- the ring (what virtqueue.py reports to RingNarrator) ----------------------------------------


def pop(avail_idx: int, last_avail_idx: int, head: int) -> str:
    return f"pop: avail idx {avail_idx}, last_avail_idx {last_avail_idx}: head {head}"


def desc(where: str, at: int, addr: int, length: int, flags: int, nxt: int) -> str:
    text = f"  {where}[{at}]: gpa {addr:#x} len {length} flags {desc_flags(flags)}"
    return text + (f" next {nxt}" if flags & VRING_DESC_F_NEXT else "")


def indirect_table(addr: int, count: int) -> str:
    return f"  indirect table at gpa {addr:#x}: {count} descriptors"


def notify_event_idx(used_idx: int, used_event: int, old: int, valid: bool, need: bool) -> str:
    if not valid:
        return (
            f"used idx {used_idx} published; EVENT_IDX: used_event {used_event}, first signal "
            "since the ring started: notify"
        )
    return (
        f"used idx {used_idx} published; EVENT_IDX: used_event {used_event}, "
        f"vring_need_event({used_event}, new {used_idx}, old {old}) is "
        f"{'true' if need else 'false'}: {'notify' if need else 'no notify'}"
    )


def notify_flags(used_idx: int, flags: int, need: bool) -> str:
    why = "" if need else " (VRING_AVAIL_F_NO_INTERRUPT)"
    return (
        f"used idx {used_idx} published; avail flags 0x{flags:x}{why}: "
        f"{'notify' if need else 'no notify'}"
    )


# -- the request (blk.py) and the datapath ----------------------------------------


def parsed(req: BlkRequest) -> list[str]:
    lines = [f"header: type {req.rtype} ({type_name(req.rtype)}), sector {req.sector}"]
    io = req.io
    if io is None:
        lines.append(
            f"no I/O: status {req.status} ({status_name(req.status)}), used len {req.used_len}"
        )
    elif io.op in (Op.READ, Op.WRITE):
        lines.append(
            f"I/O: {_OP_NAMES[io.op]} {io.length} bytes at offset {io.offset} in "
            f"{len(io.iov)} iovec(s)"
            + (" via a bounce buffer" if req.bounce_len else "")
            + (" (write-through)" if io.dsync else "")
        )
    elif io.op == Op.FLUSH:
        lines.append("I/O: flush")
    else:
        lines.append(
            f"I/O: {_OP_NAMES[io.op]} {io.length} bytes at offset {io.offset}"
            + (" (may unmap)" if io.unmap else "")
        )
    return lines


def submitted(batch_size: int) -> str:
    return f"submitted: in a batch of {batch_size} request(s), one engine call"


def completed(req: BlkRequest, result: int | None, used_idx: int) -> str:
    used = f"add_used(id {req.head}, len {req.used_len}) at used idx {used_idx}"
    status = f"status {req.status} ({status_name(req.status)})"
    if result is None:
        return f"complete: {status}; {used}"
    return f"complete: result {result}, {status}; {used}"


def released() -> str:
    return "complete: queue broken, released without touching guest memory"


def signalled(has_call_fd: bool) -> str:
    return f"signal_used: {'call eventfd written' if has_call_fd else 'no call fd set'}"


class RingNarrator:
    """The ring's steps in words (a ``virtqueue.RingEvents``): what the loop narrates."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def popped(self, avail_idx: int, last_avail_idx: int, head: int) -> None:
        self.lines.append(pop(avail_idx, last_avail_idx, head))

    def descriptor(self, where: str, at: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.lines.append(desc(where, at, addr, length, flags, nxt))

    def indirect_table(self, addr: int, count: int) -> None:
        self.lines.append(indirect_table(addr, count))

    def notify_event_idx(
        self, used_idx: int, used_event: int, old: int, valid: bool, need: bool
    ) -> None:
        self.lines.append(notify_event_idx(used_idx, used_event, old, valid, need))

    def notify_flags(self, used_idx: int, flags: int, need: bool) -> None:
        self.lines.append(notify_flags(used_idx, flags, need))


class Narrative:
    """The --trace-requests lines of one datapath, logged at the end of each pass."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.lines: list[str] = []

    def commit(self, prefix: str, lines: list[str]) -> None:
        self.lines.extend(prefix + line for line in lines)
        lines.clear()

    def emit_text(self, text: str) -> None:
        for line in text.splitlines():
            self.log.info("%s", line)

    def emit(self) -> None:
        for line in self.lines:
            self.log.info("%s", line)
        self.lines.clear()
