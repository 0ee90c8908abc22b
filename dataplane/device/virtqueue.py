"""The split virtqueue (virtio 1.2, section 2.7), device side: the Python reference.

``SplitQueue`` is ring state (``last_avail_idx``, ``used_idx``, the event-idx
bookkeeping) over ring structures that live in guest memory.  Guest memory is
passed in when the queue is attached; the queue never owns it.

Every value read from guest memory is hostile.  A bad value raises a
``GuestError`` subclass naming what was wrong; the caller marks the queue
broken and touches no more guest memory through it.

The queue says nothing itself.  A loop that wants to tell what the ring did
(``--trace-requests``) sets ``events`` to a ``RingEvents`` for the steps it
traces; the queue reports the values it read there, and nothing else.

Names follow QEMU and Linux: ``pop``, ``add_used``, ``flush_used``,
``should_notify`` (QEMU's virtio_should_notify), ``vring_need_event``.
"""

from __future__ import annotations

from typing import Protocol

from dataplane.device.c import barrier
from dataplane.device.chain import Chain
from dataplane.device.memory import GuestMemory
from dataplane.errors import (
    AvailIdxJump,
    BadHeadIndex,
    BadIndirectLength,
    BadLayout,
    BadNextIndex,
    ChainTooLong,
    LengthOverflow,
    NestedIndirect,
    UnexpectedIndirect,
)
from dataplane.spec.ring import DESC as _DESC
from dataplane.spec.ring import (
    DESC_SIZE,
    MAX_QUEUE_SIZE,
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_USED_F_NO_NOTIFY,
    RingAddrs,
    avail_ring_size,
    desc_table_size,
    used_ring_size,
    vring_need_event,
)
from dataplane.spec.ring import U16 as _U16
from dataplane.spec.ring import USED_ELEM as _USED_ELEM

U32_MAX = 0xFFFFFFFF


class RingEvents(Protocol):
    """What a queue reports, while ``SplitQueue.events`` is set, of the values it read."""

    def popped(self, avail_idx: int, last_avail_idx: int, head: int) -> None: ...

    def descriptor(
        self, where: str, at: int, addr: int, length: int, flags: int, nxt: int
    ) -> None: ...

    def indirect_table(self, addr: int, count: int) -> None: ...

    def notify_event_idx(
        self, used_idx: int, used_event: int, old: int, valid: bool, need: bool
    ) -> None: ...

    def notify_flags(self, used_idx: int, flags: int, need: bool) -> None: ...


class SplitQueue:
    """One split virtqueue, device side.

    ``max_indirect`` bounds an indirect table's entries (the seg_max the
    device advertises, plus header and status).  A direct chain is bounded by
    the queue size.
    """

    def __init__(
        self,
        num: int,
        addrs: RingAddrs,
        mem: GuestMemory,
        *,
        last_avail_idx: int = 0,
        event_idx: bool = False,
        indirect: bool = False,
        max_indirect: int | None = None,
    ) -> None:
        if not (1 <= num <= MAX_QUEUE_SIZE and num & (num - 1) == 0):
            raise ValueError(f"queue size {num} is not a power of two up to {MAX_QUEUE_SIZE}")
        self.num = num
        self.event_idx = event_idx
        self.indirect = indirect
        self.max_indirect = max_indirect if max_indirect is not None else num
        self.mem = mem
        self._desc_region, self._desc_off = mem.gpa_contiguous(addrs.desc, desc_table_size(num))
        self._avail_region, self._avail_off = mem.gpa_contiguous(addrs.avail, avail_ring_size(num))
        self._used_region, self._used_off = mem.gpa_contiguous(addrs.used, used_ring_size(num))
        self._avail_idx_addr = self._avail_region.host_addr + self._avail_off + 2
        self._used_idx_addr = self._used_region.host_addr + self._used_off + 2
        self.last_avail_idx = last_avail_idx & 0xFFFF
        self.shadow_avail_idx = self.last_avail_idx
        # Resume from what the driver can see: requests before used->idx are complete.
        self.used_idx = _U16.unpack_from(self._used_region.view, self._used_off + 2)[0]
        self.signalled_used = self.used_idx
        self.signalled_used_valid = False
        # Set by a loop that traces a step (--trace-requests): pop and should_notify report to it.
        self.events: RingEvents | None = None

    # -- avail side -----------------------------------------------------------

    def avail_idx(self) -> int:
        """Read avail->idx (acquire) and check it against ``last_avail_idx``."""
        idx = barrier.avail_idx_acquire(self._avail_idx_addr)
        if ((idx - self.last_avail_idx) & 0xFFFF) > self.num:
            raise AvailIdxJump(
                f"avail idx {idx} is {(idx - self.last_avail_idx) & 0xFFFF} past "
                f"last_avail_idx {self.last_avail_idx}, queue size {self.num}"
            )
        self.shadow_avail_idx = idx
        return idx

    def pop(self) -> Chain | None:
        """Take the next available chain, or None if the ring is empty."""
        if self.shadow_avail_idx == self.last_avail_idx and self.avail_idx() == self.last_avail_idx:
            return None
        slot = self._avail_off + 4 + 2 * (self.last_avail_idx % self.num)
        head = _U16.unpack_from(self._avail_region.view, slot)[0]
        if self.events is not None:
            self.events.popped(self.shadow_avail_idx, self.last_avail_idx, head)
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
        return self._read_chain(head)

    def map_desc(self, head: int) -> Chain:
        """The chain at ``head``, as ``pop`` reads it, without touching the avail ring:
        a request the inflight area says was in flight when the last backend died."""
        return self._read_chain(head)

    def _read_chain(self, head: int) -> Chain:
        if head >= self.num:
            raise BadHeadIndex(f"head {head} >= queue size {self.num}")
        chain = Chain(head)
        events = self.events
        region, base, size = self._desc_region, self._desc_off, self.num
        at = head  # the descriptor's index in its table, for the narrative
        addr, length, flags, nxt = _DESC.unpack_from(region.view, base + DESC_SIZE * head)
        if flags & VRING_DESC_F_INDIRECT:
            if events is not None:
                events.descriptor("desc", head, addr, length, flags, nxt)
            if not self.indirect:
                raise UnexpectedIndirect("indirect descriptor without VIRTIO_RING_F_INDIRECT_DESC")
            if flags & VRING_DESC_F_NEXT:
                raise UnexpectedIndirect("indirect descriptor with NEXT set")
            if length == 0 or length % DESC_SIZE or length // DESC_SIZE > self.max_indirect:
                raise BadIndirectLength(
                    f"indirect table length {length} is not a non-zero multiple of "
                    f"{DESC_SIZE} up to {self.max_indirect} entries"
                )
            region, base = self.mem.gpa_contiguous(addr, length)
            size = length // DESC_SIZE
            if events is not None:
                events.indirect_table(addr, size)
            addr, length, flags, nxt = _DESC.unpack_from(region.view, base)
            in_table = True
            at = 0
        else:
            in_table = False
        steps = 0
        while True:
            steps += 1
            if steps > size:
                raise ChainTooLong(f"chain from head {head} is longer than its table ({size})")
            if events is not None:
                events.descriptor("indirect" if in_table else "desc", at, addr, length, flags, nxt)
            if flags & VRING_DESC_F_INDIRECT:
                if in_table:
                    raise NestedIndirect("indirect descriptor inside an indirect table")
                raise UnexpectedIndirect("indirect descriptor in the middle of a chain")
            self._add_buffer(chain, addr, length, flags & VRING_DESC_F_WRITE)
            if not flags & VRING_DESC_F_NEXT:
                return chain
            if nxt >= size:
                raise BadNextIndex(f"next {nxt} >= table size {size}")
            at = nxt
            addr, length, flags, nxt = _DESC.unpack_from(region.view, base + DESC_SIZE * nxt)

    def _add_buffer(self, chain: Chain, addr: int, length: int, writable: int) -> None:
        chain.ndesc += 1
        chain.longest = max(chain.longest, length)
        if writable:
            chain.in_len += length
            if chain.in_len > U32_MAX:
                raise LengthOverflow("device-writable length exceeds 2**32-1")
            chain.in_.extend(self.mem.gpa_segments(addr, length))
        else:
            if chain.in_:
                raise BadLayout("device-readable descriptor after a device-writable one")
            chain.out_len += length
            if chain.out_len > U32_MAX:
                raise LengthOverflow("device-readable length exceeds 2**32-1")
            chain.out.extend(self.mem.gpa_segments(addr, length))

    # -- used side ------------------------------------------------------------

    def add_used(self, head: int, length: int) -> None:
        """Write one used element; it becomes visible at the next ``flush_used``."""
        slot = self._used_off + 4 + 8 * (self.used_idx % self.num)
        _USED_ELEM.pack_into(self._used_region.view, slot, head, length)
        self.used_idx = (self.used_idx + 1) & 0xFFFF

    def flush_used(self) -> None:
        """Publish used->idx (release): elements and buffers before the index."""
        barrier.used_idx_release(self._used_idx_addr, self.used_idx)

    def should_notify(self) -> bool:
        """Decide whether to signal the call fd for what ``flush_used`` published."""
        barrier.smp_mb()
        if self.event_idx:
            old, valid = self.signalled_used, self.signalled_used_valid
            self.signalled_used, self.signalled_used_valid = self.used_idx, True
            used_event = _U16.unpack_from(
                self._avail_region.view, self._avail_off + 4 + 2 * self.num
            )[0]
            need = not valid or vring_need_event(used_event, self.used_idx, old)
            if self.events is not None:
                self.events.notify_event_idx(self.used_idx, used_event, old, valid, need)
            return need
        flags = _U16.unpack_from(self._avail_region.view, self._avail_off)[0]
        need = not flags & VRING_AVAIL_F_NO_INTERRUPT
        if self.events is not None:
            self.events.notify_flags(self.used_idx, flags, need)
        return need

    def disable_notification(self) -> None:
        """Ask for no kicks while we work on the ring (EVENT_IDX: an old avail_event does)."""
        if not self.event_idx:
            _U16.pack_into(self._used_region.view, self._used_off, VRING_USED_F_NO_NOTIFY)

    def enable_notification(self) -> bool:
        """Ask for a kick on the next avail entry; return True if work arrived meanwhile.

        With EVENT_IDX this writes avail_event = last_avail_idx; without it,
        it clears VRING_USED_F_NO_NOTIFY.  The fence and the re-read close the
        race where the driver published an entry after our last read but
        before it could see the new avail_event (or flag).
        """
        if self.event_idx:
            _U16.pack_into(
                self._used_region.view, self._used_off + 4 + 8 * self.num, self.last_avail_idx
            )
        else:
            _U16.pack_into(self._used_region.view, self._used_off, 0)
        barrier.smp_mb()
        return self.avail_idx() != self.last_avail_idx
