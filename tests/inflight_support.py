"""The C inflight tracker (csrc/device/dp_inflight.h) behind the Python reference's interface,
and readers of the area's fields, for the inflight tests."""

from __future__ import annotations

from dataplane.device.c.inflight import CInflight
from dataplane.device.inflight import DESC, HEADER, Recovery, recovery_of


class CInflightQueue(CInflight):
    """struct dp_inflight over ``view``, with InflightQueue's methods."""

    def recover(self, used_idx: int, num: int) -> Recovery:
        return recovery_of(self.recover_raw(used_idx, num))


def header(area) -> tuple[int, int, int, int, int]:
    """(features, version, desc_num, last_batch_head, used_idx)."""
    return HEADER.unpack_from(area, 0)


def desc_state(area, head: int) -> tuple[int, int, int]:
    """(inflight, next, counter) of ``head``."""
    return DESC.unpack_from(area, HEADER.size + DESC.size * head)
