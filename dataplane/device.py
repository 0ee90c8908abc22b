"""A virtio-blk device: its image, its guest-visible state, and its dataplane thread."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dataplane.blk import Disk, offered_features
from dataplane.image import SECTOR_SIZE, open_image
from dataplane.iothread import IoThread, open_datapath
from dataplane.virtqueue import MAX_QUEUE_SIZE

DEFAULT_QUEUE_SIZE = 256
MAX_QUEUES = 64


@dataclass(slots=True)
class DeviceOptions:
    """What a user chooses for one device (the ``serve`` flags)."""

    image: Path
    aio: str = "io_uring"
    cache: str = "none"
    num_queues: int = 1
    queue_size: int = DEFAULT_QUEUE_SIZE
    read_only: bool = False
    serial: str | None = None
    datapath: str = "native"
    poll_us: int = 0


def default_serial(image: Path) -> str:
    """The image's file name, cut to the 20 bytes a virtio-blk ID holds."""
    return image.name.encode()[:20].decode(errors="ignore") or "dataplane"


class BlkDevice:
    """Opens the image, builds the engine and the thread, and answers config queries."""

    def __init__(self, name: str, opts: DeviceOptions, log: logging.Logger) -> None:
        self.name = name
        self.opts = opts
        self.log = log
        self.image = open_image(opts.image, read_only=opts.read_only, cache=opts.cache)
        try:
            serial = opts.serial if opts.serial is not None else default_serial(opts.image)
            self.disk = Disk(
                sectors=self.image.sectors,
                read_only=opts.read_only,
                serial=serial.encode()[:20],
                align=self.image.align,
                num_queues=opts.num_queues,
                queue_size=opts.queue_size,
                blk_size=max(SECTOR_SIZE, self.image.align),
            )
            datapath = open_datapath(
                opts.datapath,
                self.disk,
                opts.aio,
                self.image.fd,
                opts.num_queues * opts.queue_size,
                range(opts.num_queues),
                log,
                poll_us=opts.poll_us,
            )
            self.engine_name = datapath.engine_name
            self.thread = IoThread(f"dp/{name}/0", datapath, log)
        except BaseException:
            self.image.close()
            raise
        self.features = offered_features(read_only=opts.read_only, num_queues=opts.num_queues)
        self.thread.start()

    @property
    def num_queues(self) -> int:
        return self.opts.num_queues

    def thread_for(self, index: int) -> IoThread:
        return self.thread

    def close(self) -> None:
        """Finish in-flight I/O, stop the thread (it releases the engine), close the image."""
        self.thread.shutdown()
        self.image.close()


def check_queue_size(n: int) -> bool:
    return 2 <= n <= MAX_QUEUE_SIZE and n & (n - 1) == 0
