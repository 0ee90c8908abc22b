"""csrc/device/dp_inflight.h: inflight I/O tracking (INFLIGHT_SHMFD) over one queue's area.

``store8_release`` and ``store16_release`` are the C ordered stores themselves, bound
once (no wrapper): the tests' Python model of the tracker (tests/inflight_support.py)
makes its ordered stores through them, so that it makes exactly the stores C makes.
``CInflight`` is C's tracker (struct dp_inflight), for the tests that hold it to the model.
"""

from __future__ import annotations

from typing import Any

from dataplane.device.c import address_of, constants, ffi, lib, pinned

VERSION: int = lib.DP_INFLIGHT_VERSION
ALIGNMENT: int = lib.DP_INFLIGHT_ALIGNMENT

# DP_INFLIGHT_E* by name.
Refusal = constants(
    "Refusal", "DP_INFLIGHT_", "EVERSION EBATCH ELINK EFLAG EHEAD ENOMEM ESIZE EDESCNUM EFEATURES"
)

# The ordered stores into the area: release stores, so that every prefix of the
# program order is a consistent record for the backend that runs after a kill.
store8_release = lib.dp_inflight_store8_release
store16_release = lib.dp_inflight_store16_release

__all__ = [
    "ALIGNMENT",
    "VERSION",
    "CInflight",
    "CRecovery",
    "Refusal",
    "check_queue",
    "queue_size",
    "recovery_tuple",
    "store16_release",
    "store8_release",
]


def queue_size(desc_num: int) -> int:
    """dp_inflight_queue_size: bytes of one queue's area of ``desc_num`` entries."""
    return lib.dp_inflight_queue_size(desc_num)


def check_queue(addr: int, queue_size: int) -> int:
    """dp_inflight_check: 0, or the DP_INFLIGHT_E* code refusing the header at ``addr``."""
    return -lib.dp_inflight_check(addr, queue_size)


CRecovery = tuple[bool, int, tuple[int, ...], int, int]


class CInflight:
    """struct dp_inflight over ``view`` (one queue's area of ``desc_num`` entries)."""

    def __init__(self, view: memoryview, desc_num: int) -> None:
        size = lib.dp_inflight_queue_size(desc_num)
        if len(view) < size:
            raise ValueError(f"{len(view)} bytes cannot hold an area of {desc_num} entries")
        self._buf = pinned(view)
        self.f: Any = ffi.new("struct dp_inflight *")
        lib.dp_inflight_attach(self.f, address_of(self._buf), desc_num)

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

    def recover_raw(self, used_idx: int, num: int) -> CRecovery | int:
        """(fresh, batch_cleared, heads, last_avail_idx, used_idx), or a DP_INFLIGHT_E* code."""
        heads = ffi.new("uint16_t[]", max(num, 1))
        out = ffi.new("struct dp_inflight_recovery *")
        rc = lib.dp_inflight_recover(self.f, used_idx, num, heads, out)
        return -rc if rc < 0 else recovery_tuple(out, heads)


def recovery_tuple(out: Any, heads: Any) -> CRecovery:
    """A struct dp_inflight_recovery and its heads as (fresh, batch_cleared, heads,
    last_avail_idx, used_idx)."""
    return (
        bool(out.fresh),
        out.batch_cleared,
        tuple(heads[i] for i in range(out.nheads)),
        out.last_avail_idx,
        out.used_idx,
    )
