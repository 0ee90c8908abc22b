"""The C inflight tracker (csrc/dp_inflight.h) behind the Python reference's interface,
and readers of the area's fields, for the inflight tests."""

from __future__ import annotations

from dataplane.clib import ffi, lib
from dataplane.device.inflight import DESC, HEADER, REASONS, Recovery, queue_size_bytes
from dataplane.errors import BadInflightArea


class CInflightQueue:
    """struct dp_inflight over ``view``, with InflightQueue's methods."""

    def __init__(self, view: memoryview, desc_num: int) -> None:
        if len(view) < queue_size_bytes(desc_num):
            raise ValueError(f"{len(view)} bytes cannot hold an area of {desc_num} entries")
        self._buf = ffi.from_buffer(view)
        self.f = ffi.new("struct dp_inflight *")
        lib.dp_inflight_attach(self.f, int(ffi.cast("uintptr_t", self._buf)), desc_num)

    @property
    def counter(self) -> int:
        return self.f.counter

    @property
    def batch(self) -> int:
        return self.f.batch

    def get(self, head: int) -> None:
        lib.dp_inflight_get(self.f, head)

    def pre_put(self, head: int) -> None:
        lib.dp_inflight_pre_put(self.f, head)

    def post_put(self, used_idx: int) -> None:
        lib.dp_inflight_post_put(self.f, used_idx)

    def recover(self, used_idx: int, num: int) -> Recovery:
        heads = ffi.new("uint16_t[]", max(num, 1))
        out = ffi.new("struct dp_inflight_recovery *")
        rc = lib.dp_inflight_recover(self.f, used_idx, num, heads, out)
        if rc < 0:
            raise BadInflightArea(REASONS[-rc])
        return Recovery(
            bool(out.fresh),
            out.batch_cleared,
            tuple(heads[i] for i in range(out.nheads)),
            out.last_avail_idx,
            out.used_idx,
        )


def header(area) -> tuple[int, int, int, int, int]:
    """(features, version, desc_num, last_batch_head, used_idx)."""
    return HEADER.unpack_from(area, 0)


def desc_state(area, head: int) -> tuple[int, int, int]:
    """(inflight, next, counter) of ``head``."""
    return DESC.unpack_from(area, HEADER.size + DESC.size * head)
