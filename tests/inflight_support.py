"""The inflight tests' support: the Python model of C's tracker (csrc/device/dp_inflight.h), the
C tracker behind the model's interface, and readers of the area's fields.

``InflightModel`` is the twin of csrc/device/dp_inflight.{h,c}, operation for operation and
store for store: the layout (QueueRegionSplit, DescStateSplit), the transitions at pop
and at completion, and recovery on reconnect.  The ordered stores are the C release
stores (``cinflight``, patched by test_inflight_kill to kill at any store), so that the
model makes exactly the stores C makes; the tests hold the two byte for byte.
"""

from __future__ import annotations

import struct

from dataplane.device.c import address_of, pinned
from dataplane.device.c import inflight as cinflight
from dataplane.device.c.inflight import CInflight
from dataplane.device.inflight import REASONS, VERSION, Recovery, recovery_of
from dataplane.errors import BadInflightArea

# QueueRegionSplit: features, version, desc_num, last_batch_head, used_idx; then desc[].
HEADER = struct.Struct("<QHHHH")
# DescStateSplit: inflight, padding[5], next, counter.
DESC = struct.Struct("<B5xHQ")
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
OFF_VERSION, OFF_DESC_NUM, OFF_LAST_BATCH_HEAD, OFF_USED_IDX = 8, 10, 12, 14
DESC_OFF_NEXT, DESC_OFF_COUNTER = 6, 8


def queue_size_bytes(desc_num: int) -> int:
    """The model's bytes of one queue's area: the header and its entries, up to 64."""
    n = HEADER.size + desc_num * DESC.size
    return (n + cinflight.ALIGNMENT - 1) // cinflight.ALIGNMENT * cinflight.ALIGNMENT


def check_queue(view: memoryview, queue_size: int) -> int:
    """dp_inflight_check: 0, or the DP_INFLIGHT_E* code that refuses this queue's header."""
    features, version, desc_num, _, _ = HEADER.unpack_from(view)
    if version == 0:
        return 0
    if version != VERSION:
        return cinflight.Refusal.EVERSION
    if features != 0:
        return cinflight.Refusal.EFEATURES
    if desc_num != queue_size:
        return cinflight.Refusal.EDESCNUM
    return 0


class InflightModel:
    """One queue's tracking state over its area (struct dp_inflight), in Python."""

    __slots__ = ("view", "addr", "desc_num", "batch", "counter")

    def __init__(self, view: memoryview, desc_num: int) -> None:
        if len(view) < queue_size_bytes(desc_num):
            raise ValueError(f"{len(view)} bytes cannot hold an area of {desc_num} entries")
        self.view = view
        self.addr = address_of(pinned(view))
        self.desc_num = desc_num
        self.batch = 0
        self.counter = 0

    def _desc(self, head: int) -> int:
        return HEADER.size + head * DESC.size

    def get(self, head: int) -> None:
        """At pop, for each head, before its request starts."""
        if head >= self.desc_num:
            return
        d = self._desc(head)
        _U64.pack_into(self.view, d + DESC_OFF_COUNTER, self.counter)
        self.counter += 1
        # The counter, then the flag: the "resubmitted out of order" race (dp_inflight_get).
        cinflight.store8_release(self.addr + d, 1)

    def pre_put(self, head: int) -> None:
        """At completion, for each used element added, before used->idx is published."""
        if head >= self.desc_num:
            return
        (last,) = _U16.unpack_from(self.view, OFF_LAST_BATCH_HEAD)
        _U16.pack_into(self.view, self._desc(head) + DESC_OFF_NEXT, last)
        # next, then last_batch_head, both before used->idx: the "lost batch" race.
        cinflight.store16_release(self.addr + OFF_LAST_BATCH_HEAD, head)
        self.batch += 1

    def post_put(self, used_idx: int) -> None:
        """After used->idx = used_idx was published, for the heads since the last post_put."""
        (h,) = _U16.unpack_from(self.view, OFF_LAST_BATCH_HEAD)
        i = 0
        while i < self.batch and h < self.desc_num:
            d = self._desc(h)
            (nxt,) = _U16.unpack_from(self.view, d + DESC_OFF_NEXT)
            # Only now that used->idx is published: the "lost request" race.
            cinflight.store8_release(self.addr + d, 0)
            h = nxt
            i += 1
        # used_idx after every flag of the batch: the "stale batch" race.
        cinflight.store16_release(self.addr + OFF_USED_IDX, used_idx)
        self.batch = 0

    def recover(self, used_idx: int, num: int) -> Recovery:
        """Recover the queue of size ``num`` whose used->idx reads ``used_idx``.

        Raises BadInflightArea if the record is not one we could have written.
        """
        self.batch = 0
        self.counter = 0
        if num > self.desc_num:
            raise BadInflightArea(REASONS[cinflight.Refusal.ESIZE])
        _, version, desc_num, last_batch_head, rec_used_idx = HEADER.unpack_from(self.view)
        if version == 0:
            self._initialise(used_idx)
            return Recovery(True, 0, (), 0, used_idx)
        if version != VERSION:
            raise BadInflightArea(REASONS[cinflight.Refusal.EVERSION])
        if desc_num != self.desc_num:
            raise BadInflightArea(REASONS[cinflight.Refusal.EDESCNUM])
        # A batch published as used but not yet recorded: its heads completed.
        batch = (used_idx - rec_used_idx) & 0xFFFF
        if batch:
            if batch > num:
                raise BadInflightArea(REASONS[cinflight.Refusal.EBATCH])
            h = last_batch_head
            for _ in range(batch):
                if h >= num:
                    raise BadInflightArea(REASONS[cinflight.Refusal.ELINK])
                d = self._desc(h)
                cinflight.store8_release(self.addr + d, 0)
                (h,) = _U16.unpack_from(self.view, d + DESC_OFF_NEXT)
            cinflight.store16_release(self.addr + OFF_USED_IDX, used_idx)
        pending = []
        for i in range(self.desc_num):
            flag, _, counter = DESC.unpack_from(self.view, self._desc(i))
            if flag == 0:
                continue
            if flag != 1:
                raise BadInflightArea(REASONS[cinflight.Refusal.EFLAG])
            if i >= num:
                raise BadInflightArea(REASONS[cinflight.Refusal.EHEAD])
            pending.append((counter, i))
        pending.sort()
        # New pops come after every resubmitted one (C's u64 counter wraps the same way).
        self.counter = (pending[-1][0] + 1) & 0xFFFFFFFFFFFFFFFF if pending else 0
        heads = tuple(h for _, h in pending)
        return Recovery(False, batch, heads, (used_idx + len(heads)) & 0xFFFF, used_idx)

    def _initialise(self, used_idx: int) -> None:
        """A new area: everything zero, then the version (the record is valid)."""
        end = HEADER.size + self.desc_num * DESC.size
        self.view[HEADER.size : end] = bytes(end - HEADER.size)
        HEADER.pack_into(self.view, 0, 0, 0, self.desc_num, 0, used_idx)
        cinflight.store16_release(self.addr + OFF_VERSION, VERSION)


class CInflightQueue(CInflight):
    """struct dp_inflight over ``view``, with InflightModel's methods."""

    def recover(self, used_idx: int, num: int) -> Recovery:
        return recovery_of(self.recover_raw(used_idx, num))


def header(area) -> tuple[int, int, int, int, int]:
    """(features, version, desc_num, last_batch_head, used_idx)."""
    return HEADER.unpack_from(area, 0)


def desc_state(area, head: int) -> tuple[int, int, int]:
    """(inflight, next, counter) of ``head``."""
    return DESC.unpack_from(area, HEADER.size + DESC.size * head)
