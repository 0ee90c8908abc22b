"""A device's remote disk, an NBD export or an RBD image: one engine per dataplane thread.

Each engine is its own connection (csrc/device/dp_nbd.c, dp_rbd.c).  The first one connects
and says what the target offers (``RemoteInfo``), and the device follows it: the
capacity, read-only (a snapshot, or a server that exports read-only), the block size,
and FLUSH, DISCARD and WRITE_ZEROES only where the target can do them.  ``iothreads``
above 1 opens more connections only where that is safe (``check_iothreads``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dataplane.device.datapath.base import Datapath
from dataplane.device.datapath.c import CDatapath
from dataplane.device.engines.remote import (
    RemoteEngine,
    RemoteInfo,
    check_iothreads,
    open_nbd,
    open_rbd,
)
from dataplane.device.instrument import Instruments
from dataplane.errors import TargetUnavailable
from dataplane.spec.blk import SECTOR_SIZE
from dataplane.spec.targets import image_kind

if TYPE_CHECKING:
    from dataplane.device.blk import Disk
    from dataplane.serve.device_options import DeviceOptions

# virtio-blk's blk_size is the guest's logical block size, which Linux takes up to a page.
MAX_BLOCK_SIZE = 4096
# No polling unless asked for: a remote engine's completions arrive on its socket or eventfd,
# which the polling loop does not look at (it sees only completions already reaped), so
# every reply would wait out the window (4 KiB randread at QD1 over NBD: 4k IOPS polling,
# 55k not; bench/RESULTS.md).
REMOTE_POLL_US = 0


class RemoteBacking:
    """The engines of one remote disk, opened at once; each datapath takes its own."""

    align = 1  # the engines take any guest buffer: nothing bounces in the dataplane thread

    def __init__(self, opts: DeviceOptions, depths: list[int]) -> None:
        """Open one engine per entry of ``depths`` (its queue depth): TargetUnavailable,
        or UsageError for a request the target cannot serve (iothreads)."""
        self.kind = image_kind(opts.image)
        self.target = str(opts.image)
        self._opts = opts
        self._engines: list[RemoteEngine | None] = []
        try:
            self._engines.append(self._open(depths[0]))
            self.info: RemoteInfo = self._engines[0].info
            check_iothreads(self.info, len(depths), self.target)
            if self.info.block_min > MAX_BLOCK_SIZE:
                raise TargetUnavailable(
                    f"{self.target}: the target's smallest I/O is {self.info.block_min} bytes; "
                    f"a virtio-blk guest takes blocks of at most {MAX_BLOCK_SIZE}"
                )
            for depth in depths[1:]:
                self._engines.append(self._open(depth))
        except BaseException:
            self.close()
            raise

    def _open(self, depth: int) -> RemoteEngine:
        o = self._opts
        if self.kind == "nbd":
            return open_nbd(o.image, depth, reconnect_s=o.reconnect_s, read_only=o.read_only)
        return open_rbd(
            o.image, depth, conf=o.ceph_conf, user=o.ceph_user, keyring=o.ceph_keyring,
            read_only=o.read_only,
        )  # fmt: skip

    @property
    def sectors(self) -> int:
        return self.info.sectors

    @property
    def read_only(self) -> bool:
        return self._opts.read_only or self.info.read_only

    @property
    def blk_size(self) -> int:
        return max(SECTOR_SIZE, self.info.block_min)

    def take_writes(self) -> bool:
        """A remote disk's server arbitrates its writers (NBD: one server for both ends
        of a migration; RBD: librbd's exclusive lock moves to whoever writes)."""
        return True

    def give_up_writes(self) -> None:
        return None

    def can(self) -> dict[str, bool]:
        """What the device offers beyond reads and writes (``offered_features``' keywords)."""
        info = self.info
        return {"flush": info.can_flush, "discard": info.can_trim, "write_zeroes": info.can_zero}

    def datapath(
        self,
        n: int,
        disk: Disk,
        queues: range,
        log: logging.Logger,
        instruments: Instruments,
    ) -> Datapath:
        """Thread ``n``'s datapath over engine ``n``, which it owns from here on."""
        engine, self._engines[n] = self._engines[n], None
        assert engine is not None, f"engine {n} was taken already"
        poll_us = self._opts.poll_us
        if poll_us and n == 0:
            log.warning(
                "%s: poll-us=%d on a remote disk: polling does not see the engine's replies "
                "(they wait out the window); poll-us=0 is its default", self.target, poll_us
            )  # fmt: skip
        try:
            return CDatapath(
                disk, engine, queues, log,
                poll_us=REMOTE_POLL_US if poll_us is None else poll_us, instruments=instruments,
            )  # fmt: skip
        except BaseException:
            engine.close()
            raise

    def close(self) -> None:
        """Close the engines no datapath took (a datapath closes its own)."""
        for i, engine in enumerate(self._engines):
            if engine is not None:
                engine.close()
                self._engines[i] = None
