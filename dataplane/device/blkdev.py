"""A virtio-blk device: its image, its guest-visible state, and its dataplane thread(s); with
settings.py, the device wing's public API (``__all__``): all that the serving floor
(dataplane/serve/) may import of the wing.  tests/test_layers.py holds the floor to these two.

Its lifetime: built (``BlkDevice(...)``: the backing opened, the threads started),
reconfigured (``resize``, ``set_limits``), closed.  In between, a vhost-user session hands
it what the frontend set up, as commands to the dataplane thread that owns a ring
(``start_ring``, ``stop_ring``, the notifier fds) or to every live thread at once (guest
memory, the dirty log, the write cache).  Each command answers with a
``concurrent.futures.Future``, resolved on the thread between runs (iothread.py).

What the API names besides the device:

- its image opened ahead (``open_device_image``, ``Image``) and the serial it takes by
  default (``default_serial``);
- what a vhost-user session hands it: guest memory (``GuestMemory``, ``MAX_MEM_SLOTS``),
  the inflight area (``InflightArea``), the dirty log (``DirtyLog``), a ring's set-up
  (``RingSetup``), and the checks on the frontend's eventfds (``check_eventfd``,
  ``drain_eventfd``);
- what the process sets up once: the SIGBUS containment's wake-up fd
  (``set_sigbus_wake_fd``) and its own confinement (``confine_process``: another user, the
  seccomp allow-list; each device's threads load theirs with ``BlkDevice.confine``);
- what the stats hold: the histograms' buckets (``BUCKETS``).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from dataplane.device.c.sigbus import set_wake_fd as set_sigbus_wake_fd
from dataplane.device.datapath.base import Datapath, RingSetup
from dataplane.device.datapath.factory import open_datapath, open_remote_datapath
from dataplane.device.dirty_log import DirtyLog
from dataplane.device.disk import ALL_CAN, Disk, offered_features
from dataplane.device.eventfd import check_eventfd
from dataplane.device.eventfd import drain as drain_eventfd
from dataplane.device.image import Image, open_image, resize_image
from dataplane.device.inflight import InflightArea
from dataplane.device.instrument import Instruments
from dataplane.device.iothread import IoThread
from dataplane.device.limiter import Limiter
from dataplane.device.memory import MAX_MEM_SLOTS, GuestMemory
from dataplane.device.remote_disk import RemoteBacking
from dataplane.device.sandbox import confine as confine_process
from dataplane.device.settings import DeviceSettings
from dataplane.device.stats import BUCKETS, merge_snapshots
from dataplane.errors import GuestError, UsageError
from dataplane.spec.blk import SECTOR_SIZE
from dataplane.spec.targets import image_kind, parse_rbd_spec

Future = concurrent.futures.Future

__all__ = [
    "BUCKETS",
    "MAX_MEM_SLOTS",
    "BlkDevice",
    "DirtyLog",
    "GuestMemory",
    "Image",
    "InflightArea",
    "RingSetup",
    "check_eventfd",
    "confine_process",
    "default_serial",
    "drain_eventfd",
    "open_device_image",
    "set_sigbus_wake_fd",
]


class FileBacking:
    """An image file, opened and locked: each thread runs engine ``aio`` on its fd."""

    kind = "file"

    def __init__(self, image: Image, opts: DeviceSettings) -> None:
        self.image = image
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

    def close(self) -> None:
        self.image.close()


def open_backing(opts: DeviceSettings, image: Image | None = None) -> FileBacking | RemoteBacking:
    """What serves the device's blocks: its image file (``image``, if already opened and
    locked), or the connections to its remote disk, one per dataplane thread."""
    if opts.kind == "file":
        return FileBacking(image or open_device_image(opts), opts)  # type: ignore[arg-type]
    assert image is None, "a remote disk has no image file"
    return RemoteBacking(opts, [len(q) * opts.queue_size for q in queue_groups(opts)])


def queue_groups(opts: DeviceSettings) -> list[range]:
    """The queues of each dataplane thread: queue i runs on thread i % iothreads."""
    return [range(n, opts.num_queues, opts.iothreads) for n in range(opts.iothreads)]


def open_device_image(opts: DeviceSettings) -> Image | None:
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
        self, name: str, opts: DeviceSettings, log: logging.Logger, *, image: Image | None = None
    ) -> None:
        self.name = name
        self.opts = opts
        self.log = log
        self.failed: str | None = None
        self.on_failure: Callable[[str], None] | None = None
        # The frontend failed a thread (its dirty log is too small): the server drops it.
        self.on_frontend_error: Callable[[str], None] | None = None
        self.dirty_log_on = False  # the threads log dirty pages (set_dirty_log)
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
                datapath = self._open_datapath(n, queues)
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

    def _open_datapath(self, n: int, queues: range) -> Datapath:
        """Thread ``n``'s datapath: engine ``aio`` on the image file, or the remote disk's
        connection ``n`` (the datapath owns it from here on)."""
        o, b = self.opts, self.backing
        if isinstance(b, RemoteBacking):
            engine = b.take_engine(n, self.log)
            return open_remote_datapath(
                self.disk, engine, queues, self.log, poll_us=o.poll_us,
                instruments=self.instruments,
            )  # fmt: skip
        return open_datapath(
            o.datapath, self.disk, o.aio, b.image.fd, len(queues) * o.queue_size, queues,
            self.log, poll_us=o.poll_us, instruments=self.instruments, test_delay=o.test_delay,
        )  # fmt: skip

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

    # -- commands from the vhost-user session -----------------------------------------

    def ring_alive(self, index: int) -> bool:
        """Whether the thread that owns ring ``index`` is alive (a dead one released its
        rings and its memory by itself)."""
        return not self.thread_for(index).dead

    def start_ring(self, setup: RingSetup) -> Future:
        """Start ring ``setup.index`` on its thread (which owns the fds in ``setup``)."""
        return self.thread_for(setup.index).start_ring(setup)

    def stop_ring(self, index: int) -> Future:
        """Stop popping from ring ``index``; resolves to its last_avail_idx once idle."""
        return self.thread_for(index).stop_ring(index)

    def set_call_fd(self, index: int, fd: int | None) -> Future:
        """SET_VRING_CALL: ring ``index``'s thread owns ``fd`` from here on and signals it."""
        return self.thread_for(index).set_call_fd(index, fd)

    def set_err_fd(self, index: int, fd: int | None) -> Future:
        return self.thread_for(index).set_err_fd(index, fd)

    def set_used_log(self, index: int, gpa: int | None) -> Future:
        """SET_VRING_ADDR's VHOST_VRING_F_LOG on a running ring (``gpa`` None: off)."""
        return self.thread_for(index).set_used_log(index, gpa)

    def break_ring(self, index: int, err: GuestError) -> Future:
        """Break ring ``index`` (guest RAM is gone): logged once, its err eventfd signalled."""
        return self.thread_for(index).break_ring(index, err)

    def set_memory(self, mem: GuestMemory | None) -> Future:
        """Every live thread swaps in ``mem`` once nothing is in flight; when this resolves,
        none uses the table it had (it may be unmapped)."""
        return self._to_live_threads(lambda t: t.set_memory(mem))

    def set_dirty_log(self, host_addr: int, pages: int) -> Future:
        """Every live thread logs into the log at ``host_addr`` (0: off); when this resolves,
        none uses the previous log, and ``dirty_log_on`` says which it is."""
        done = self._to_live_threads(lambda t: t.set_dirty_log(host_addr, pages))

        def switched(f: Future) -> None:  # added first: runs before the awaiting session resumes
            if f.exception() is None:
                self.dirty_log_on = host_addr != 0

        done.add_done_callback(switched)
        return done

    def set_writeback(self, writeback: bool) -> Future:
        """The guest flipped the write cache (config space): every live thread follows."""
        return self._to_live_threads(lambda t: t.set_writeback(writeback))

    def confine(self) -> Future:
        """Every live thread loads its seccomp allow-list (once), now that the process has
        its own (sandbox.confine); threads started later load theirs as they start."""
        return self._to_live_threads(lambda t: t.confine())

    def _to_live_threads(self, command: Callable[[IoThread], Future]) -> Future:
        """``command`` on every live thread (a dead one serves nothing: its device has
        failed); one future, done once each thread's is, with the first failure if any."""
        return all_done([command(t) for t in self.threads if not t.dead])

    # -- reconfiguration ------------------------------------------------------------

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
            self._to_live_threads(lambda t: t.set_capacity(sectors)).result()
            self.backing.sectors = self.disk.sectors = sectors
        return sectors

    def take_writes(self) -> bool:
        """Write ownership of the image, for rings that start (image.py): False while
        another backend holds it (a live migration's other end)."""
        return self.backing.take_writes()

    def give_up_writes(self) -> None:
        """Every ring stopped: another backend (the migration's destination) may write."""
        self.backing.give_up_writes()

    def set_limits(self, opts: DeviceSettings) -> None:
        """The limits of ``opts`` (serve/mgmt_live.py with_limits), live: the threads book in the
        limiter's atomics so no command is needed; they are woken
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


def default_serial(image: Path | str) -> str:
    """The file, export or RBD image name, cut to the 20 bytes a virtio-blk ID holds."""
    kind = image_kind(image)
    if kind == "nbd":
        name = urlsplit(str(image)).path.lstrip("/")
    elif kind == "rbd":
        name = parse_rbd_spec(str(image)).image
    else:
        name = Path(image).name
    return name.encode()[:20].decode(errors="ignore") or "dataplane"


def all_done(futures: list[Future]) -> Future:
    """One future for ``futures``: done once every one is (never before: what they guard,
    such as an old memory table, may go only then), with the first failure, if any, else
    their results.  It cannot be cancelled: a caller that gives up leaves the commands to
    finish (they run on the threads anyway)."""
    out: Future = Future()
    out.set_running_or_notify_cancel()
    remaining = len(futures)
    lock = threading.Lock()

    def one_done(_: Future) -> None:
        nonlocal remaining
        with lock:
            remaining -= 1
            if remaining:
                return
        for f in futures:
            exc = concurrent.futures.CancelledError() if f.cancelled() else f.exception()
            if exc is not None:
                out.set_exception(exc)
                return
        out.set_result([f.result() for f in futures])

    if not futures:
        out.set_result([])
    for f in futures:
        f.add_done_callback(one_done)
    return out
