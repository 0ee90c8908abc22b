"""A virtio-blk device: its image, its guest-visible state, and its dataplane thread(s)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from dataplane.device.blk import ALL_CAN, Disk, offered_features
from dataplane.device.datapath.base import Datapath
from dataplane.device.datapath.factory import open_datapath
from dataplane.device.image import Image, open_image, resize_image
from dataplane.device.instrument import Instruments
from dataplane.device.iothread import IoThread
from dataplane.device.limiter import Limiter
from dataplane.device.stats import merge_snapshots
from dataplane.errors import UsageError
from dataplane.serve.device_options import DeviceOptions, default_serial
from dataplane.serve.remote_disk import RemoteBacking
from dataplane.spec.blk import SECTOR_SIZE
from dataplane.spec.ring import MAX_QUEUE_SIZE


class FileBacking:
    """An image file, opened and locked: each thread runs engine ``aio`` on its fd."""

    kind = "file"

    def __init__(self, image: Image, opts: DeviceOptions) -> None:
        self.image = image
        self._opts = opts
        self.sectors = image.sectors
        self.read_only = opts.read_only
        # The null engine moves no data: any buffer will do, nothing bounces.
        self.align = 1 if opts.aio == "null" else image.align
        self.blk_size = max(SECTOR_SIZE, image.align)

    def can(self) -> dict[str, bool]:
        return dict(ALL_CAN)

    def take_writes(self) -> bool:
        return self.image.take_writes()

    def give_up_writes(self) -> None:
        self.image.give_up_writes()

    def datapath(
        self, n: int, disk: Disk, queues: range, log: logging.Logger, instruments: Instruments
    ) -> Datapath:
        o = self._opts
        return open_datapath(
            o.datapath, disk, o.aio, self.image.fd, len(queues) * o.queue_size, queues, log,
            poll_us=o.poll_us, instruments=instruments, test_delay=o.test_delay,
        )  # fmt: skip

    def close(self) -> None:
        self.image.close()


def open_backing(opts: DeviceOptions, image: Image | None = None) -> FileBacking | RemoteBacking:
    """What serves the device's blocks: its image file (``image``, if already opened and
    locked), or the connections to its remote disk, one per dataplane thread."""
    if opts.kind == "file":
        return FileBacking(image or open_device_image(opts), opts)  # type: ignore[arg-type]
    assert image is None, "a remote disk has no image file"
    return RemoteBacking(opts, [len(q) * opts.queue_size for q in queue_groups(opts)])


def queue_groups(opts: DeviceOptions) -> list[range]:
    """The queues of each dataplane thread: queue i runs on thread i % iothreads."""
    return [range(n, opts.num_queues, opts.iothreads) for n in range(opts.iothreads)]


def open_device_image(opts: DeviceOptions) -> Image | None:
    """The device's image file opened and locked (None for a remote disk: nothing to open)."""
    if opts.kind != "file":
        return None
    return open_image(
        opts.image, read_only=opts.read_only, cache=opts.cache, incoming=opts.incoming
    )


class BlkDevice:
    """Opens the backing, builds the engines and the threads, and answers config queries.

    ``image``: the image file already opened and locked (``open_device_image``),
    owned by the device from here on; else the device opens its backing: the file,
    or one connection per thread to its remote disk.  The device *fails* when one
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
        # The frontend failed a thread (its dirty log is too small): the server drops it.
        self.on_frontend_error: Callable[[str], None] | None = None
        self.dirty_log_on = False  # set by the connection's session (handler.py)
        self.backing = open_backing(opts, image)
        self.kind = self.backing.kind
        self.threads: list[IoThread] = []
        self.instruments = Instruments()  # --record and --trace-requests, set below
        # One limiter for all the device's threads: they book in it in arrival order.
        self.limiter = Limiter(opts.limits)
        try:
            self.instruments = Instruments(opts.record, opts.trace_requests)
            serial = opts.serial if opts.serial is not None else default_serial(opts.image)
            b = self.backing
            self.disk = Disk(
                sectors=b.sectors,
                read_only=b.read_only,
                serial=serial.encode()[:20],
                align=b.align,
                num_queues=opts.num_queues,
                queue_size=opts.queue_size,
                blk_size=b.blk_size,
                bounce_bytes=opts.bounce_mib << 20,
            )
            for n, queues in enumerate(queue_groups(opts)):
                datapath = b.datapath(n, self.disk, queues, log, self.instruments)
                datapath.set_limiter(self.limiter)
                datapath.on_frontend_error = self._frontend_error
                cpus = (opts.cpus[n % len(opts.cpus)],) if opts.cpus else ()
                thread = IoThread(f"dp/{name}/{n}", datapath, log, cpus=cpus)
                thread.on_death = lambda e, t=thread: self._thread_died(t, e)
                self.threads.append(thread)
            self.engine_name = self.threads[0].engine_name
            self.dirty_log_capable = all(t.datapath.supports_dirty_log for t in self.threads)
            self.inflight_capable = all(t.datapath.supports_inflight for t in self.threads)
        except BaseException:
            for t in self.threads:
                t.datapath.close()
            self.instruments.close()
            self.backing.close()
            raise
        self.features = offered_features(
            read_only=self.disk.read_only, num_queues=opts.num_queues, can=self.backing.can()
        )
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
            self.backing.close()
            raise

    def _thread_died(self, thread: IoThread, e: BaseException) -> None:
        if self.failed is None:
            self.failed = f"dataplane thread {thread.name} died: {type(e).__name__}: {e}"
            if self.on_failure is not None:
                self.on_failure(self.failed)

    def _frontend_error(self, reason: str) -> None:
        if self.on_frontend_error is not None:
            self.on_frontend_error(reason)

    def dirty_pages_logged(self) -> int:
        """Pages the device's threads set in dirty logs (live migration), ever."""
        return sum(t.datapath.dirty_pages() for t in self.threads)

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

    def resize(self, new_size: int | None = None) -> int:
        """Grow the image file to ``new_size`` bytes, or take in the size it was grown to
        (device/image.py resize_image: shrinking is refused); the capacity in sectors after.

        The threads' bounds grow first, then the config space: a guest that reads the new
        capacity finds every sector of it served.  Blocks until the threads took it.
        """
        if not isinstance(self.backing, FileBacking):
            raise UsageError(
                f"{self.name} is a remote disk ({self.kind}): resize grows image files only; "
                "resize the remote disk, then remove and add the device"
            )
        sectors = resize_image(self.backing.image, new_size)
        if sectors != self.disk.sectors:
            live = [t for t in self.threads if not t.dead]
            for done in [t.set_capacity(sectors) for t in live]:
                done.result()
            self.backing.sectors = self.disk.sectors = sectors
        return sectors

    def take_writes(self) -> bool:
        """Write ownership of the image, for rings that start (image.py): False while
        another backend holds it (a live migration's other end)."""
        return self.backing.take_writes()

    def give_up_writes(self) -> None:
        """Every ring stopped: another backend (the migration's destination) may write."""
        self.backing.give_up_writes()

    def set_limits(self, opts: DeviceOptions) -> None:
        """The limits of ``opts`` (mgmt_live.with_limits), live: the threads book in the
        limiter's atomics, so no command is needed; they are woken
        to let go of a request held under the old limits."""
        self.limiter.set(opts.limits)
        self.opts = opts
        for t in self.threads:  # a request held under the old limits goes now
            t.datapath.wake()

    def close(self) -> None:
        """Finish in-flight I/O, stop the threads (they release the engines), close the backing."""
        for t in self.threads:
            t.shutdown()
        self.instruments.close(self.log)
        self.backing.close()

    def stats(self) -> dict:
        """The device's stats: its threads' snapshots merged, queues by index (device/stats.py)."""
        threads = getattr(self, "threads", None) or [self.thread]
        merged = merge_snapshots([t.stats() for t in threads])
        throttle = {"throttled": self.limiter.throttled, "throttled_ns": self.limiter.throttled_ns}
        dirty = {"dirty-log": self.dirty_log_on, "dirty-pages-logged": self.dirty_pages_logged()}
        return {
            "device": self.name, "image_kind": self.kind, "failed": self.failed, **throttle,
            **dirty, **merged,
        }  # fmt: skip


def check_queue_size(n: int) -> bool:
    return 2 <= n <= MAX_QUEUE_SIZE and n & (n - 1) == 0
