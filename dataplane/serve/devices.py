"""The devices one process serves, by name: ``DeviceSet``.

Each has its image, its dataplane threads (the device wing's ``BlkDevice``) and the task of
its server (front.py's ``DeviceFront``: server.py's ``DeviceServer``, which the process hands
the set) on its own vhost-user socket.  Adding one binds its socket and
starts its threads; removing one cancels its server task, which stops the rings
(in-flight requests finish first, as for GET_VRING_BASE) and drops the
connection, then closes the device and removes the socket file.

A device whose dataplane thread died is *failed* (``BlkDevice.failed``): it accepts
no more connections, and ``remove`` removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dataplane.device.blkdev import BlkDevice, Image, open_device_image, set_sigbus_wake_fd
from dataplane.errors import UsageError
from dataplane.serve.activation import InheritedSocket, adopt_socket
from dataplane.serve.device_options import DeviceOptions, assign_names, check_unique
from dataplane.serve.front import DeviceFront
from dataplane.serve.sockets import BoundSocket, claim_socket_path

__all__ = ["DeviceSet", "Served", "describe_line", "open_images", "socket_text"]

# How a device's server is made: server.py's DeviceServer (process.py hands it over).
ServerFactory = Callable[[BlkDevice, BoundSocket, logging.Logger], DeviceFront]


@dataclass(slots=True)
class Served:
    """One device of the process, and the task serving its socket."""

    opts: DeviceOptions
    device: BlkDevice
    server: DeviceFront
    task: asyncio.Task


class DeviceSet:
    """The devices one ``dataplane serve`` process serves, by name."""

    def __init__(self, log: logging.Logger, server: ServerFactory) -> None:
        self.log = log
        self._server = server
        self.served: dict[str, Served] = {}
        self._lock = asyncio.Lock()  # one add or remove at a time
        # SIGBUS containment (csrc/device/dp_sigbus.h) wakes the loop through this eventfd.
        self._sigbus_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        set_sigbus_wake_fd(self._sigbus_fd)
        asyncio.get_running_loop().add_reader(self._sigbus_fd, self._guest_memory_faulted)

    def __iter__(self) -> Iterator[Served]:
        return iter(list(self.served.values()))

    def lookup(self, name: object) -> Served:
        """The device named ``name``; UsageError listing the devices there are if none."""
        served = self.served.get(name) if isinstance(name, str) else None
        if served is None:
            there = ", ".join(self.served) or "none"
            raise UsageError(f"no device named {name!r} (devices: {there})")
        return served

    def _guest_memory_faulted(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._sigbus_fd)
        for s in self:
            s.server.guest_memory_faulted()

    def claim(self, opts: DeviceOptions) -> tuple[DeviceOptions, BoundSocket]:
        """Name the device, check it against the others, and bind its socket (UsageError)."""
        if not opts.name:
            opts = assign_names([opts], self.served)[0]
        if opts.socket is None:
            raise UsageError(f"device {opts.name!r}: socket= is required")
        check_unique([opts], [s.opts for s in self.served.values()])
        if isinstance(opts.socket, InheritedSocket):
            return opts, BoundSocket.inherited(adopt_socket(opts.socket))
        return opts, claim_socket_path(opts.socket, access=opts.socket_access())

    async def start(
        self, opts: DeviceOptions, bound: BoundSocket, image: Image | None = None
    ) -> Served:
        """Open the image (off the event loop) and start the threads of a claimed device."""
        try:
            device = await asyncio.to_thread(BlkDevice, opts.name, opts, self.log, image=image)
        except BaseException:
            bound.abandon()
            raise
        server = self._server(device, bound, self.log)
        task = asyncio.ensure_future(server.serve_forever())
        served = Served(opts, device, server, task)
        task.add_done_callback(lambda t: self._server_ended(served, t))
        self.served[opts.name] = served
        return served

    async def add(self, opts: DeviceOptions) -> Served:
        """Bind the device's socket, open its image and start its threads (UsageError if not):
        ``add-device``."""
        async with self._lock:
            opts, bound = self.claim(opts)
            served = await self.start(opts, bound)
        self.log.info("added at runtime: %s", describe_line(served))
        return served

    def _server_ended(self, served: Served, task: asyncio.Task) -> None:
        """A server task that ends by itself is a bug of its accept loop: its device fails."""
        if task.cancelled():
            return
        exc = task.exception()
        reason = f"its server task failed: {exc!r}" if exc else "its server task ended"
        self.log.error("%s: %s", served.opts.name, reason)
        served.device.failed = served.device.failed or reason

    async def remove(self, name: str) -> None:
        """Stop serving ``name``: its rings stop, its connection drops, its socket goes."""
        async with self._lock:
            served = self.served.pop(self.lookup(name).opts.name)
            await self._stop(served)
        self.log.info("%s: removed", name)

    async def _stop(self, served: Served) -> None:
        served.task.cancel()
        try:
            await asyncio.wait([served.task])
        finally:
            served.server.close()
            await asyncio.to_thread(served.device.close)

    async def close(self) -> None:
        """Stop every device (shutdown); the first failure is raised after all were tried."""
        async with self._lock:
            served, self.served = list(self.served.values()), {}
            error: BaseException | None = None
            for s in served:
                try:
                    await self._stop(s)
                except Exception as e:
                    self.log.error("%s: closing failed: %r", s.opts.name, e)
                    error = error or e
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._sigbus_fd)
            set_sigbus_wake_fd(None)
            os.close(self._sigbus_fd)
            if error is not None:
                raise error


async def open_images(devices: list[DeviceOptions]) -> list[Image | None]:
    """Open and lock every device's image file off the event loop; all or none (UsageError).

    A remote disk has no file: None (its device connects when it starts).
    """
    images: list[Image | None] = []
    try:
        for d in devices:
            images.append(await asyncio.to_thread(open_device_image, d))
    except BaseException:
        for img in images:
            if img is not None:
                img.close()
        raise
    return images


def socket_text(socket: object) -> str:
    return socket.describe() if isinstance(socket, InheritedSocket) else str(socket)


def describe_line(s: Served) -> str:
    o = s.opts
    threads = len(s.device.threads)
    pinned = ""
    if o.cpus:
        pinned = ", cpus " + "/".join(",".join(map(str, t.cpus)) for t in s.device.threads)
    return (
        f"{o.name} listening on {socket_text(o.socket)}: {s.device.kind} {o.image}, "
        f"{s.device.disk.sectors} sectors, "
        f"{o.num_queues} queue(s) on {threads} thread(s){pinned}, aio={s.device.engine_name}, "
        f"{f'cache={o.cache}, ' if o.kind == 'file' else ''}datapath={o.datapath}"
        f"{', read-only' if s.device.disk.read_only else ''}"
        f"{', incoming (writes once the rings start)' if o.incoming else ''}"
    )
