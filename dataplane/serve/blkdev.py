"""A virtio-blk device: its image, its guest-visible state, and its dataplane thread(s)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dataplane.device.blk import DEFAULT_BOUNCE_BYTES, Disk, offered_features
from dataplane.device.datapath.factory import open_datapath
from dataplane.device.image import SECTOR_SIZE, Image, open_image
from dataplane.device.instrument import Instruments
from dataplane.device.iothread import IoThread
from dataplane.device.stats import merge_snapshots
from dataplane.device.virtqueue import MAX_QUEUE_SIZE
from dataplane.serve.activation import InheritedSocket

DEFAULT_QUEUE_SIZE = 256
MAX_QUEUES = 64
DEFAULT_BOUNCE_MIB = DEFAULT_BOUNCE_BYTES >> 20


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
    poll_us: int | None = None  # None: the datapath's default (datapath.factory.DEFAULT_POLL_US)
    name: str = ""  # "" until named (config.assign_names): vblk<N>
    # Where the server listens (not used by BlkDevice itself): a path, or an inherited
    # listening fd (activation.InheritedSocket: socket=fd:N, systemd socket activation).
    socket: Path | InheritedSocket | None = None
    socket_mode: int | None = None  # socket-mode=, -owner=, -group=: see socket_access.py
    socket_owner: str | None = None
    socket_group: str | None = None
    iothreads: int = 1  # dataplane threads; queue i runs on thread i % iothreads
    cpus: tuple[int, ...] = ()  # thread n is pinned to cpus[n % len(cpus)]; () = not pinned
    record: Path | None = None  # --record: the request trace file
    trace_requests: int = 0  # --trace-requests: narrate the first N requests
    bounce_mib: int = DEFAULT_BOUNCE_MIB  # bounce memory per dataplane thread


def default_serial(image: Path) -> str:
    """The image's file name, cut to the 20 bytes a virtio-blk ID holds."""
    return image.name.encode()[:20].decode(errors="ignore") or "dataplane"


class BlkDevice:
    """Opens the image, builds the engine and the thread, and answers config queries.

    ``image``: the image already opened and locked (``open_image``), owned by the
    device from here on; else the device opens it.  The device *fails* when one
    of its threads dies: ``failed`` says why, and ``on_failure`` (set by its
    server) is called with that reason, on the dying thread.
    """

    def __init__(
        self, name: str, opts: DeviceOptions, log: logging.Logger, *, image: Image | None = None
    ) -> None:
        self.name = name
        self.opts = opts
        self.log = log
        self.failed: str | None = None
        self.on_failure: Callable[[str], None] | None = None
        if image is None:
            image = open_image(opts.image, read_only=opts.read_only, cache=opts.cache)
        self.image = image
        self.threads: list[IoThread] = []
        self.instruments = Instruments()  # --record and --trace-requests, set below
        try:
            self.instruments = Instruments(opts.record, opts.trace_requests)
            serial = opts.serial if opts.serial is not None else default_serial(opts.image)
            self.disk = Disk(
                sectors=self.image.sectors,
                read_only=opts.read_only,
                serial=serial.encode()[:20],
                # The null engine moves no data: any buffer will do, nothing bounces.
                align=1 if opts.aio == "null" else self.image.align,
                num_queues=opts.num_queues,
                queue_size=opts.queue_size,
                blk_size=max(SECTOR_SIZE, self.image.align),
                bounce_bytes=opts.bounce_mib << 20,
            )
            for n in range(opts.iothreads):
                # Queue i runs on thread i % iothreads, each thread with its own engine.
                queues = range(n, opts.num_queues, opts.iothreads)
                datapath = open_datapath(
                    opts.datapath,
                    self.disk,
                    opts.aio,
                    self.image.fd,
                    len(queues) * opts.queue_size,
                    queues,
                    log,
                    poll_us=opts.poll_us,
                    instruments=self.instruments,
                )
                cpus = (opts.cpus[n % len(opts.cpus)],) if opts.cpus else ()
                thread = IoThread(f"dp/{name}/{n}", datapath, log, cpus=cpus)
                thread.on_death = lambda e, t=thread: self._thread_died(t, e)
                self.threads.append(thread)
            self.engine_name = self.threads[0].engine_name
        except BaseException:
            for t in self.threads:
                t.datapath.close()
            self.instruments.close()
            self.image.close()
            raise
        self.features = offered_features(read_only=opts.read_only, num_queues=opts.num_queues)
        started: list[IoThread] = []
        try:
            for t in self.threads:
                t.start()
                started.append(t)
                t.pin()
        except BaseException:
            for t in started:
                t.shutdown()
            for t in self.threads[len(started) :]:
                t.datapath.close()
            self.instruments.close()
            self.image.close()
            raise

    def _thread_died(self, thread: IoThread, e: BaseException) -> None:
        if self.failed is None:
            self.failed = f"dataplane thread {thread.name} died: {type(e).__name__}: {e}"
            if self.on_failure is not None:
                self.on_failure(self.failed)

    @property
    def num_queues(self) -> int:
        return self.opts.num_queues

    @property
    def thread(self) -> IoThread:
        """The first dataplane thread (the only one unless iothreads > 1)."""
        return self.threads[0]

    def thread_for(self, index: int) -> IoThread:
        """The thread that owns queue ``index``."""
        return self.threads[index % len(self.threads)]

    def close(self) -> None:
        """Finish in-flight I/O, stop the threads (they release the engines), close the image."""
        for t in self.threads:
            t.shutdown()
        self.instruments.close(self.log)
        self.image.close()

    def stats(self) -> dict:
        """The device's stats: its threads' snapshots merged, queues by index (device/stats.py)."""
        threads = getattr(self, "threads", None) or [self.thread]
        merged = merge_snapshots([t.stats() for t in threads])
        return {"device": self.name, "failed": self.failed, **merged}


def check_queue_size(n: int) -> bool:
    return 2 <= n <= MAX_QUEUE_SIZE and n & (n - 1) == 0
