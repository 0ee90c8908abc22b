"""Many devices in one process, and the management socket that shows and changes them.

``DeviceSet`` holds the served devices: each has its image, its dataplane threads
(device.py) and its ``DeviceServer`` task (server.py) on its own vhost-user socket.
Adding one binds its socket and starts its threads; removing one cancels its server
task, which stops the rings (in-flight requests finish first, as for GET_VRING_BASE)
and drops the connection, then closes the device and removes the socket file.

The management socket (``dataplane serve --mgmt PATH``) speaks JSON lines: one request
object per line, one response object per line, in order.  Every response has ``"ok"``;
a failed request answers ``{"ok": false, "error": "..."}`` and the connection stays
usable.  Requests:

- ``{"cmd": "devices"}``: ``{"ok": true, "devices": [DEVICE...]}``, each with the keys
  of config.py (``socket``, ``image``, ``num-queues``, ...) plus ``engine``,
  ``connected``, ``connections`` and ``threads`` (name, kernel ``tid``, ``queues``,
  ``cpus``).
- ``{"cmd": "stats"}`` (optionally ``"name"``): ``{"ok": true, "time": T,
  "devices": {NAME: STATS}}``, where STATS is ``BlkDevice.stats()`` (per-queue
  counters under ``queues``, histograms: see instrument.py) plus ``"iothreads"``: each
  thread's name, queues and, on the native datapath, its C loop counters (``loop``).
- ``{"cmd": "metrics"}`` (optionally ``"name"``): ``{"ok": true, "text": "..."}``, the
  same numbers in the Prometheus text format: what ``serve --metrics`` serves on
  ``/metrics`` (metrics.py).
- ``{"cmd": "add-device", "spec": {KEY: VALUE...}}``: the keys of ``--device``;
  answers ``{"ok": true, "device": DEVICE}`` once the socket listens.
- ``{"cmd": "remove-device", "name": NAME}``: answers ``{"ok": true}`` once the device
  is gone and its socket file removed.

A device whose dataplane thread died is *failed*: ``devices`` shows ``"state":
"failed"`` and ``"error"`` (the reason), ``stats`` has ``"failed"``; it accepts no
more connections, and ``remove-device`` removes it.

The socket is mode 0600 and answers only peers of the server's own uid, or root
(SO_PEERCRED); others get one error line and are disconnected.  A request line
is at most MAX_LINE bytes and its JSON at most MAX_DEPTH levels deep.  With
DATAPLANE_TEST_HOOKS=1 in the environment (tests only) there is one more
request, ``{"cmd": "test-kill-thread", "name": NAME}``: the device's first
dataplane thread dies as of a bug.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dataplane.clib import lib
from dataplane.device.image import Image
from dataplane.errors import UsageError
from dataplane.serve.activation import InheritedSocket, adopt_socket
from dataplane.serve.blkdev import BlkDevice, DeviceOptions, open_device_image
from dataplane.serve.config import (
    assign_names,
    check_unique,
    options_from_mapping,
    socket_access,
    spec_of,
)
from dataplane.serve.metrics import exposition
from dataplane.serve.server import BoundSocket, DeviceServer, claim_socket_path

MAX_LINE = 64 << 10
MAX_DEPTH = 16
TEST_HOOKS_ENV = "DATAPLANE_TEST_HOOKS"
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(slots=True)
class Served:
    """One device and the task serving its socket."""

    opts: DeviceOptions
    device: BlkDevice
    server: DeviceServer
    task: asyncio.Task


class DeviceSet:
    """The devices one ``dataplane serve`` process serves, by name."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.served: dict[str, Served] = {}
        self._lock = asyncio.Lock()  # one add or remove at a time
        # SIGBUS containment (csrc/dp_sigbus.h) wakes the loop through this eventfd.
        self._sigbus_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        lib.dp_sigbus_set_wake_fd(self._sigbus_fd)
        asyncio.get_running_loop().add_reader(self._sigbus_fd, self._guest_memory_faulted)

    def __iter__(self) -> Iterator[Served]:
        return iter(list(self.served.values()))

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
        return opts, claim_socket_path(opts.socket, access=socket_access(opts))

    async def start(
        self, opts: DeviceOptions, bound: BoundSocket, image: Image | None = None
    ) -> Served:
        """Open the image (off the event loop) and start the threads of a claimed device."""
        try:
            device = await asyncio.to_thread(BlkDevice, opts.name, opts, self.log, image=image)
        except BaseException:
            bound.abandon()
            raise
        server = DeviceServer(device, bound, self.log)
        task = asyncio.ensure_future(server.serve_forever())
        served = Served(opts, device, server, task)
        task.add_done_callback(lambda t: self._server_ended(served, t))
        self.served[opts.name] = served
        return served

    async def add(self, opts: DeviceOptions) -> Served:
        """Bind the device's socket, open its image and start its threads (UsageError if not)."""
        opts, bound = self.claim(opts)
        return await self.start(opts, bound)

    def _server_ended(self, served: Served, task: asyncio.Task) -> None:
        """A server task that ends by itself is a bug of its accept loop: its device fails."""
        if task.cancelled():
            return
        exc = task.exception()
        reason = f"its server task failed: {exc!r}" if exc else "its server task ended"
        self.log.error("%s: %s", served.opts.name, reason)
        served.device.failed = served.device.failed or reason

    async def add_spec(self, spec: object) -> Served:
        """``add-device``: a spec with the ``--device`` keys, checked like one."""
        async with self._lock:
            opts = options_from_mapping(spec, "add-device")  # type: ignore[arg-type]
            served = await self.add(opts)
        self.log.info("added at runtime: %s", describe_line(served))
        return served

    async def remove(self, name: str) -> None:
        """Stop serving ``name``: its rings stop, its connection drops, its socket goes."""
        async with self._lock:
            served = self.served.pop(name, None)
            if served is None:
                raise UsageError(f"no device named {name!r} (devices: {', '.join(self.served)})")
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
            lib.dp_sigbus_set_wake_fd(-1)
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
    )


# -- what the management socket answers ----------------------------------------------------


def thread_info(device: BlkDevice, *, loop: bool = False) -> list[dict[str, Any]]:
    out = []
    for t in device.threads:
        info: dict[str, Any] = {
            "name": t.name,
            "tid": t.native_id,
            "queues": sorted(t.datapath.rings),
            "cpus": list(t.cpus),
        }
        loop_stats = getattr(t.datapath, "stats", None)
        if loop and callable(loop_stats):
            info["loop"] = loop_stats()
        out.append(info)
    return out


def device_info(s: Served) -> dict[str, Any]:
    info = spec_of(s.opts)
    info["engine"] = s.device.engine_name
    info["image-kind"] = s.device.kind
    info["connected"] = s.server.connected
    info["connections"] = s.server.connections
    info["state"] = "failed" if s.device.failed is not None else "serving"
    if s.device.failed is not None:
        info["error"] = s.device.failed
    info["threads"] = thread_info(s.device)
    return info


def device_stats(s: Served) -> dict[str, Any]:
    """``BlkDevice.stats()`` (per-device and per-queue counters) plus the threads."""
    stats_fn = getattr(s.device, "stats", None)
    stats: dict[str, Any] = dict(stats_fn()) if callable(stats_fn) else {}
    stats["iothreads"] = thread_info(s.device, loop=True)
    return stats


def snapshot(devices: DeviceSet, name: str | None = None) -> dict[str, Any]:
    if name is not None and name not in devices.served:
        raise UsageError(f"no device named {name!r}")
    return {
        "ok": True,
        "time": time.time(),
        "devices": {
            s.opts.name: device_stats(s) for s in devices if name is None or s.opts.name == name
        },
    }


def metrics_snapshot(devices: DeviceSet, name: str | None = None) -> dict[str, Any]:
    """What metrics.py exports: each device's stats and settings, taken on the event loop."""
    snap = snapshot(devices, name)
    for s in devices:
        if s.opts.name in snap["devices"]:
            info = device_info(s)
            snap["devices"][s.opts.name] = {"stats": snap["devices"][s.opts.name], "info": info}
    return snap


# -- the socket ----------------------------------------------------------------------------


class MgmtServer:
    """JSON lines on a UNIX socket: show the devices and their stats, add and remove devices."""

    def __init__(self, path: Path, devices: DeviceSet, log: logging.Logger) -> None:
        self.path = path
        self.devices = devices
        self.log = log
        self._server: asyncio.AbstractServer | None = None
        self._bound: BoundSocket | None = None
        self._clients: set[asyncio.Task] = set()
        self._refused_logged = False
        self.test_hooks = os.environ.get(TEST_HOOKS_ENV) == "1"

    def claim(self) -> None:
        """Bind the socket (mode 0600); UsageError if the path is taken."""
        self._bound = claim_socket_path(self.path, backlog=16)

    async def start(self) -> None:
        if self._bound is None:
            self.claim()
        assert self._bound is not None
        try:
            self._server = await asyncio.start_unix_server(
                self._client, sock=self._bound.sock, limit=MAX_LINE
            )
        except BaseException:
            self._bound.close()
            self._bound = None
            raise

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._clients):
                t.cancel()
            if self._clients:
                await asyncio.wait(list(self._clients))
            self._server = None
        if self._bound is not None:
            self._bound.close()  # only the socket file this process bound
            self._bound = None

    def _peer_allowed(self, writer: asyncio.StreamWriter) -> bool:
        """SO_PEERCRED: the peer runs as the server's uid, or as root."""
        sock = writer.get_extra_info("socket")
        try:
            _, uid, _ = _PEERCRED.unpack(
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            )
        except (OSError, AttributeError):
            return False
        if uid in (0, os.geteuid()):
            return True
        if not self._refused_logged:
            self._refused_logged = True
            self.log.warning("management socket: refused a client of uid %d (logged once)", uid)
        return False

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            if not self._peer_allowed(writer):
                writer.write(_encode({"ok": False, "error": "permission denied (uid)"}))
                await writer.drain()
                return
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than MAX_LINE
                    writer.write(_encode({"ok": False, "error": "request line too long"}))
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                writer.write(_encode(await self.answer(line)))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def answer(self, line: bytes) -> dict[str, Any]:
        """One request line -> one response object (never raises for a bad request)."""
        if json_depth(line) > MAX_DEPTH:
            return {"ok": False, "error": f"request nested deeper than {MAX_DEPTH} levels"}
        try:
            req = json.loads(line)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            return {"ok": False, "error": f"not a JSON object: {e}"}
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            return {"ok": False, "error": 'a request is a JSON object with "cmd"'}
        cmd = req["cmd"]
        try:
            if cmd == "devices":
                return {"ok": True, "devices": [device_info(s) for s in self.devices]}
            if cmd == "stats":
                return snapshot(self.devices, req.get("name"))
            if cmd == "metrics":
                text = exposition(metrics_snapshot(self.devices, req.get("name")))
                return {"ok": True, "text": text}
            if cmd == "add-device":
                served = await self.devices.add_spec(req.get("spec"))
                return {"ok": True, "device": device_info(served)}
            if cmd == "remove-device":
                name = req.get("name")
                if not isinstance(name, str):
                    return {"ok": False, "error": 'remove-device needs "name"'}
                await self.devices.remove(name)
                return {"ok": True}
            if cmd == "test-kill-thread" and self.test_hooks:
                return await self._kill_thread(req.get("name"))
        except UsageError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # a bug or a host failure: say so, keep serving
            self.log.exception("management request %r failed", cmd)
            return {"ok": False, "error": f"{cmd} failed: {type(e).__name__}: {e}"}
        return {
            "ok": False,
            "error": f"unknown cmd {cmd!r} (devices, stats, metrics, add-device, remove-device)",
        }

    async def _kill_thread(self, name: object) -> dict[str, Any]:
        served = self.devices.served.get(name) if isinstance(name, str) else None
        if served is None:
            return {"ok": False, "error": f"no device named {name!r}"}
        thread = served.device.threads[0]
        fut = thread.kill(RuntimeError("killed by the test-kill-thread hook"))
        with contextlib.suppress(RuntimeError):
            await asyncio.wrap_future(fut)
        await asyncio.to_thread(thread.join, 10)
        return {"ok": True}


def json_depth(line: bytes) -> int:
    """How deep the brackets of a JSON text nest (strings skipped): linear, no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for b in line:
        if in_string:
            if escaped:
                escaped = False
            elif b == 0x5C:  # backslash
                escaped = True
            elif b == 0x22:  # quote
                in_string = False
        elif b == 0x22:
            in_string = True
        elif b in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif b in (0x5D, 0x7D):
            depth -= 1
    return deepest


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


# -- the client side (``dataplane stat``, tests) --------------------------------------------


class MgmtClient:
    """A blocking JSON-lines client of the management socket."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except BaseException:
            self.sock.close()
            raise
        self._buf = b""

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send one request; return the response (``ok`` may be false)."""
        self.sock.sendall(_encode({"cmd": cmd, **fields}))
        return self.read_response()

    def read_response(self) -> dict[str, Any]:
        """The next response line."""
        while b"\n" not in self._buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError(f"{self.path} closed the connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        resp = json.loads(line)
        if not isinstance(resp, dict) or "ok" not in resp:
            raise ValueError(f"{self.path} answered {line[:80]!r}")
        return resp

    def call(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """``request``, raising RuntimeError when ``ok`` is false."""
        resp = self.request(cmd, **fields)
        if not resp["ok"]:
            raise RuntimeError(resp.get("error", "failed"))
        return resp

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MgmtClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "DeviceSet",
    "MgmtClient",
    "MgmtServer",
    "Served",
    "describe_line",
    "metrics_snapshot",
]
