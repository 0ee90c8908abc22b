"""Inflight I/O tracking for split virtqueues (INFLIGHT_SHMFD): the Python reference.

The twin of csrc/device/dp_inflight.{h,c}, operation for operation and store for store:
the layout (QueueRegionSplit, DescStateSplit), the transitions at pop and at
completion, recovery on reconnect, and the area as a whole: allocated in a memfd
for GET_INFLIGHT_FD, adopted, validated, on SET_INFLIGHT_FD.  The header of
csrc/device/dp_inflight.h says why and in which order; the differential tests hold the
two byte for byte.  The ordered stores are the C release stores, so that the
reference makes exactly the stores the native path makes.

Every value in the area is hostile: the frontend owns the memfd.  Adopting an area
that cannot be one we sized is a ProtocolError (the connection drops); a queue
whose record is inconsistent at recovery raises BadInflightArea (it does not start).
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from dataclasses import dataclass

from dataplane.device.c import inflight as native
from dataplane.device.c import sigbus
from dataplane.device.c.host import address_of, pinned, view_at
from dataplane.device.virtqueue import MAX_QUEUE_SIZE
from dataplane.errors import BadInflightArea, ProtocolError

VERSION = native.VERSION
ALIGNMENT = native.ALIGNMENT

# QueueRegionSplit: features, version, desc_num, last_batch_head, used_idx; then desc[].
HEADER = struct.Struct("<QHHHH")
# DescStateSplit: inflight, padding[5], next, counter.
DESC = struct.Struct("<B5xHQ")
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")
OFF_VERSION, OFF_DESC_NUM, OFF_LAST_BATCH_HEAD, OFF_USED_IDX = 8, 10, 12, 14
DESC_OFF_NEXT, DESC_OFF_COUNTER = 6, 8

# Why a record is refused, by C's DP_INFLIGHT_E* code (the Python twin says the same).
REASONS = {
    native.Refusal.EVERSION: "inflight area has a version this backend does not know",
    native.Refusal.EBATCH: "inflight area's used_idx lags used->idx by more than a queue",
    native.Refusal.ELINK: "inflight area's last batch list leaves the ring",
    native.Refusal.EFLAG: "inflight area has an inflight flag that is neither 0 nor 1",
    native.Refusal.EHEAD: "inflight area marks a head in flight that the ring cannot have",
    native.Refusal.ENOMEM: "out of memory recovering the inflight area",
    native.Refusal.ESIZE: "ring is larger than the inflight area's queue size",
    native.Refusal.EDESCNUM: "inflight area's desc_num is not the queue size",
    native.Refusal.EFEATURES: "inflight area has feature flags this backend does not know",
}


def queue_size_bytes(desc_num: int) -> int:
    """Bytes of one queue's area: the header and desc_num entries, rounded up to 64."""
    n = HEADER.size + desc_num * DESC.size
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def region_size(num_queues: int, queue_size: int) -> int:
    """Bytes of the whole area: the queues' areas back to back (GET_INFLIGHT_FD's mmap_size)."""
    return num_queues * queue_size_bytes(queue_size)


def check_queue(view: memoryview, queue_size: int) -> int:
    """dp_inflight_check: 0, or the DP_INFLIGHT_E* code that refuses this queue's header."""
    features, version, desc_num, _, _ = HEADER.unpack_from(view)
    if version == 0:
        return 0
    if version != VERSION:
        return native.Refusal.EVERSION
    if features != 0:
        return native.Refusal.EFEATURES
    if desc_num != queue_size:
        return native.Refusal.EDESCNUM
    return 0


def _addr(view: memoryview) -> int:
    return address_of(pinned(view))


@dataclass(frozen=True, slots=True)
class Recovery:
    """struct dp_inflight_recovery, with the heads to resubmit (oldest first).

    ``last_avail_idx`` is where popping resumes: ``used_idx`` plus the heads resubmitted,
    since QEMU rewinds SET_VRING_BASE to used->idx after a backend died.  For a ``fresh``
    area (no record yet) it is 0 and means nothing: SET_VRING_BASE's value stands.
    """

    fresh: bool
    batch_cleared: int
    heads: tuple[int, ...]
    last_avail_idx: int
    used_idx: int


def recovery_of(raw: native.CRecovery | int) -> Recovery:
    """C's recovery (CInflight.recover_raw, CThread.start_inflight) as the reference's."""
    if isinstance(raw, int):
        raise BadInflightArea(REASONS.get(raw, f"inflight recovery failed ({raw})"))
    return Recovery(*raw)


def queue_at(addr: int, desc_num: int) -> InflightQueue:
    """The queue area mapped at host address ``addr`` (RingSetup.inflight_addr)."""
    return InflightQueue(view_at(addr, queue_size_bytes(desc_num)), desc_num)


class InflightQueue:
    """One queue's tracking state over its area (struct dp_inflight)."""

    __slots__ = ("view", "addr", "desc_num", "batch", "counter")

    def __init__(self, view: memoryview, desc_num: int) -> None:
        if len(view) < queue_size_bytes(desc_num):
            raise ValueError(f"{len(view)} bytes cannot hold an area of {desc_num} entries")
        self.view = view
        self.addr = _addr(view)
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
        native.store8_release(self.addr + d, 1)

    def pre_put(self, head: int) -> None:
        """At completion, for each used element added, before used->idx is published."""
        if head >= self.desc_num:
            return
        (last,) = _U16.unpack_from(self.view, OFF_LAST_BATCH_HEAD)
        _U16.pack_into(self.view, self._desc(head) + DESC_OFF_NEXT, last)
        # next, then last_batch_head, both before used->idx: the "lost batch" race.
        native.store16_release(self.addr + OFF_LAST_BATCH_HEAD, head)
        self.batch += 1

    def post_put(self, used_idx: int) -> None:
        """After used->idx = used_idx was published, for the heads since the last post_put."""
        (h,) = _U16.unpack_from(self.view, OFF_LAST_BATCH_HEAD)
        i = 0
        while i < self.batch and h < self.desc_num:
            d = self._desc(h)
            (nxt,) = _U16.unpack_from(self.view, d + DESC_OFF_NEXT)
            # Only now that used->idx is published: the "lost request" race.
            native.store8_release(self.addr + d, 0)
            h = nxt
            i += 1
        # used_idx after every flag of the batch: the "stale batch" race.
        native.store16_release(self.addr + OFF_USED_IDX, used_idx)
        self.batch = 0

    def recover(self, used_idx: int, num: int) -> Recovery:
        """Recover the queue of size ``num`` whose used->idx reads ``used_idx``.

        Raises BadInflightArea if the record is not one we could have written.
        """
        self.batch = 0
        self.counter = 0
        if num > self.desc_num:
            raise BadInflightArea(REASONS[native.Refusal.ESIZE])
        _, version, desc_num, last_batch_head, rec_used_idx = HEADER.unpack_from(self.view)
        if version == 0:
            self._initialise(used_idx)
            return Recovery(True, 0, (), 0, used_idx)
        if version != VERSION:
            raise BadInflightArea(REASONS[native.Refusal.EVERSION])
        if desc_num != self.desc_num:
            raise BadInflightArea(REASONS[native.Refusal.EDESCNUM])
        # A batch published as used but not yet recorded: its heads completed.
        batch = (used_idx - rec_used_idx) & 0xFFFF
        if batch:
            if batch > num:
                raise BadInflightArea(REASONS[native.Refusal.EBATCH])
            h = last_batch_head
            for _ in range(batch):
                if h >= num:
                    raise BadInflightArea(REASONS[native.Refusal.ELINK])
                d = self._desc(h)
                native.store8_release(self.addr + d, 0)
                (h,) = _U16.unpack_from(self.view, d + DESC_OFF_NEXT)
            native.store16_release(self.addr + OFF_USED_IDX, used_idx)
        pending = []
        for i in range(self.desc_num):
            flag, _, counter = DESC.unpack_from(self.view, self._desc(i))
            if flag == 0:
                continue
            if flag != 1:
                raise BadInflightArea(REASONS[native.Refusal.EFLAG])
            if i >= num:
                raise BadInflightArea(REASONS[native.Refusal.EHEAD])
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
        native.store16_release(self.addr + OFF_VERSION, VERSION)


class InflightArea:
    """The whole area: its fd and mapping, one queue area after another."""

    def __init__(
        self, fd: int, mapping: mmap.mmap, start: int, num_queues: int, queue_size: int
    ) -> None:
        self.fd = fd
        self.num_queues = num_queues
        self.queue_size = queue_size
        self.mmap_size = region_size(num_queues, queue_size)
        self._map = mapping
        self.view = memoryview(mapping)[start : start + self.mmap_size]
        self._addr = _addr(self.view)
        try:
            # The frontend keeps the fd and may shrink it under us (an area it sealed or not).
            self._watch = sigbus.Watch(_addr(self.view) - start, len(mapping))
        except BaseException:
            self.view.release()
            mapping.close()
            raise

    @classmethod
    def allocate(cls, num_queues: int, queue_size: int, *, max_queues: int) -> InflightArea:
        """GET_INFLIGHT_FD: a new, zeroed area in a memfd whose size is sealed."""
        _check_description(num_queues, queue_size, max_queues)
        size = region_size(num_queues, queue_size)
        fd = os.memfd_create("dataplane-inflight", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(
                fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
            )
            return cls(fd, mmap.mmap(fd, size), 0, num_queues, queue_size)  # owns fd now
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def adopt(
        cls,
        fd: int,
        mmap_size: int,
        mmap_offset: int,
        num_queues: int,
        queue_size: int,
        *,
        max_queues: int,
    ) -> InflightArea:
        """SET_INFLIGHT_FD: map the area the frontend kept, after checking all of it.

        Takes ownership of ``fd`` (closed on failure).  Raises ProtocolError.
        """
        try:
            _check_description(num_queues, queue_size, max_queues)
            need = region_size(num_queues, queue_size)
            if mmap_size < need:
                raise ProtocolError(
                    f"inflight area of {mmap_size} bytes is smaller than the {need} that "
                    f"{num_queues} queues of {queue_size} need"
                )
            try:
                fd_size = os.fstat(fd).st_size
            except OSError as e:
                raise ProtocolError(f"inflight fd is not usable: {e}") from None
            if mmap_offset + need > fd_size:
                raise ProtocolError(
                    f"inflight area needs {mmap_offset + need} bytes of its fd, "
                    f"which has only {fd_size}"
                )
            base = mmap_offset - mmap_offset % mmap.ALLOCATIONGRANULARITY
            try:
                mapping = mmap.mmap(fd, mmap_offset - base + need, offset=base)
            except (OSError, ValueError) as e:  # ValueError: the fd shrank since fstat
                raise ProtocolError(f"cannot map the inflight area: {e}") from None
            area = cls(fd, mapping, mmap_offset - base, num_queues, queue_size)
        except BaseException:
            os.close(fd)
            raise
        for i in range(num_queues):
            code = check_queue(area.queue_view(i), queue_size)
            if code:
                area.close()
                raise ProtocolError(f"queue {i}: {REASONS[code]}")
        return area

    def queue_view(self, index: int) -> memoryview:
        """Queue ``index``'s area."""
        if not 0 <= index < self.num_queues:
            raise IndexError(f"the inflight area has no queue {index}")
        size = queue_size_bytes(self.queue_size)
        return self.view[index * size : (index + 1) * size]

    def queue_addr(self, index: int) -> int:
        """The host address of queue ``index``'s area (mapped until ``close``)."""
        if not 0 <= index < self.num_queues:
            raise IndexError(f"the inflight area has no queue {index}")
        return self._addr + index * queue_size_bytes(self.queue_size)

    def queue(self, index: int) -> InflightQueue:
        return InflightQueue(self.queue_view(index), self.queue_size)

    def faulted(self) -> bool:
        """True once the frontend shrank the memfd under the mapping (a contained SIGBUS)."""
        return self._watch.faulted()

    def close(self) -> None:
        """Unmap and close. Every queue view handed out must be released first."""
        self._watch.close()
        self.view.release()
        self._map.close()
        os.close(self.fd)


def _check_description(num_queues: int, queue_size: int, max_queues: int) -> None:
    if not 1 <= num_queues <= max_queues:
        raise ProtocolError(f"inflight area for {num_queues} queues; the device has {max_queues}")
    if not 1 <= queue_size <= MAX_QUEUE_SIZE:
        raise ProtocolError(f"inflight area for queues of {queue_size} entries")
