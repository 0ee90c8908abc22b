"""The management socket: JSON lines that show and change the served devices.

``dataplane serve --mgmt PATH`` speaks JSON lines: one request
object per line, one response object per line, in order.  Every response has ``"ok"``;
a failed request answers ``{"ok": false, "error": "..."}`` and the connection stays
usable.  Requests:

- ``{"cmd": "devices"}``: ``{"ok": true, "devices": [DEVICE...]}``, each with the keys
  of config.py (``socket``, ``image``, ``num-queues``, ...) with the values in effect
  (``serial``, ``poll-us`` and ``socket-mode`` too where the key was left out) plus
  ``engine``, ``size``, ``image-kind``, ``state``, ``connected``, ``connections``,
  ``throttled-ns`` and ``threads`` (name, kernel ``tid``, ``queues``, ``cpus``).
- ``{"cmd": "stats"}`` (optionally ``"name"``): ``{"ok": true, "time": T,
  "devices": {NAME: STATS}}``, where STATS is ``BlkDevice.stats()`` with its keys in
  kebab-case, as every key here is (``throttled-ns``, ``bytes-read``; per-queue
  counters under ``queues``, histograms: see device/stats.py) plus ``"iothreads"``: each
  thread's name, queues and, on the native datapath, its C loop counters (``loop``).
- ``{"cmd": "metrics"}`` (optionally ``"name"``): ``{"ok": true, "text": "..."}``, the
  same numbers in the Prometheus text format: what ``serve --metrics`` serves on
  ``/metrics`` (metrics.py).
- ``{"cmd": "add-device", "spec": {KEY: VALUE...}}``: the keys of ``--device``;
  answers ``{"ok": true, "device": DEVICE}`` once the socket listens.
- ``{"cmd": "remove-device", "name": NAME}``: answers ``{"ok": true}`` once the device
  is gone and its socket file removed.
- ``{"cmd": "set-limits", "name": NAME, "limits": {KEY: VALUE...}}``: the I/O limit keys
  given (device_keys.py) change live; answers ``{"ok": true, "device": DEVICE}`` (mgmt_live.py).
- ``{"cmd": "resize", "name": NAME}`` (optionally ``"size": BYTES``): the image file grew
  (or grows to BYTES; shrinking is refused), the guest is told (mgmt_live.py).

A device whose dataplane thread died is *failed*: ``devices`` shows ``"state":
"failed"`` and ``"error"`` (the reason), ``stats`` has ``"failed"``; it accepts no
more connections, and ``remove-device`` removes it.

A client that sends binary (a vhost-user frontend given this socket instead of a
device's) gets one error line and a warning in the log that says so.

The socket is mode 0600 and answers only peers of the server's own uid, or root
(SO_PEERCRED); others get one error line and are disconnected.  A request line
is at most MAX_LINE bytes and its JSON at most MAX_DEPTH levels deep.  With the
test-hooks switch on (``DATAPLANE_TEST_HOOKS=1``: dataplane/test_hooks.py) there are two
more requests, ``test-kill-thread`` and ``test-forbidden-call``; without it they are
unknown commands.
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
from pathlib import Path
from typing import Any

from dataplane import test_hooks
from dataplane.errors import ImageInUse, UsageError
from dataplane.json_keys import kebab_keys
from dataplane.serve.config import options_from_mapping
from dataplane.serve.device_info import device_info, device_stats
from dataplane.serve.devices import DeviceSet, Served
from dataplane.serve.metrics import exposition
from dataplane.serve.mgmt_client import encode_line
from dataplane.serve.mgmt_live import resize, set_limits
from dataplane.serve.sockets import BoundSocket, claim_socket_path

MAX_LINE = 64 << 10
MAX_DEPTH = 16
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
# add-device's spelling of a read-only device: the JSON key, and the command's KEY=VALUE.
ADD_DEVICE_READ_ONLY = '"read-only": true; read-only=on with dataplane add-device'

__all__ = ["MAX_DEPTH", "MAX_LINE", "MgmtServer", "json_depth", "metrics_snapshot", "stats_reply"]


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
        self.test_hooks = test_hooks.enabled()

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
                writer.write(encode_line({"ok": False, "error": "permission denied (uid)"}))
                await writer.drain()
                return
            first = await reader.read(1)
            if first and first[0] < 0x20 and first not in b"\t\r\n":
                # A vhost-user header (QEMU's GET_FEATURES is 01 00 00 00 ...), not JSON:
                # the frontend was given this socket instead of a device's.
                self.log.warning(
                    "management socket %s: a client sent binary, not JSON lines (a vhost-user "
                    "frontend such as QEMU?): give it a device's socket=, not --mgmt",
                    self.path,
                )
                writer.write(encode_line({"ok": False, "error": "not a JSON line"}))
                await writer.drain()
                return
            while True:
                try:
                    line = first + await reader.readline()
                    first = b""
                except ValueError:  # longer than MAX_LINE
                    writer.write(encode_line({"ok": False, "error": "request line too long"}))
                    break
                if not line:
                    break
                if not line.strip():
                    continue
                writer.write(encode_line(await self.answer(line)))
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
                return {"ok": True, "devices": [_info(s) for s in self.devices]}
            if cmd == "stats":
                return stats_reply(self.devices, req.get("name"))
            if cmd == "metrics":
                text = exposition(metrics_snapshot(self.devices, req.get("name")))
                return {"ok": True, "text": text}
            if cmd == "add-device":
                return {"ok": True, "device": _info(await self._add_device(req.get("spec")))}
            if cmd == "remove-device":
                name = req.get("name")
                if not isinstance(name, str):
                    return {"ok": False, "error": 'remove-device needs "name"'}
                await self.devices.remove(name)
                return {"ok": True}
            if cmd == "set-limits":
                served = _served(self.devices, req, cmd)
                served.opts = set_limits(served.opts, served.device, req)
                return {"ok": True, "device": _info(served)}
            if cmd == "resize":
                served = _served(self.devices, req, cmd)
                told = await resize(served.device, served.server, req)
                return {"ok": True, "device": {**_info(served), "told": told}}
            if cmd == "test-kill-thread" and self.test_hooks:
                return await self._kill_thread(req.get("name"))
            if cmd == "test-forbidden-call" and self.test_hooks:
                thread = self.devices.lookup(req.get("name")).device.threads[0]
                return {"ok": True, "ppid": await asyncio.wrap_future(thread.call(os.getppid))}
        except UsageError as e:
            return {"ok": False, "error": str(e)}
        except Exception as e:  # a bug or a host failure: say so, keep serving
            self.log.exception("management request %r failed", cmd)
            return {"ok": False, "error": f"{cmd} failed: {type(e).__name__}: {e}"}
        return {
            "ok": False,
            "error": f"unknown cmd {cmd!r} (devices, stats, metrics, add-device, remove-device, "
            "set-limits, resize)",
        }

    async def _add_device(self, spec: object) -> Served:
        """``add-device``: a spec with the ``--device`` keys, checked like one."""
        opts = options_from_mapping(spec, "add-device", base=None)  # type: ignore[arg-type]
        try:
            return await self.devices.add(opts)
        except ImageInUse as e:  # the read-only spelling of add-device, not of serve's
            raise ImageInUse(e.path, e.read_only, ADD_DEVICE_READ_ONLY) from None

    async def _kill_thread(self, name: object) -> dict[str, Any]:
        served = self.devices.lookup(name)
        thread = served.device.threads[0]
        fut = thread.kill(RuntimeError("killed by the test-kill-thread hook"))
        with contextlib.suppress(RuntimeError):
            await asyncio.wrap_future(fut)
        await asyncio.to_thread(thread.join, 10)
        return {"ok": True}


def _served(devices: DeviceSet, req: dict[str, Any], cmd: str) -> Served:
    """The device a request names (UsageError if it names none that is served)."""
    name = req.get("name")
    if not isinstance(name, str):
        raise UsageError(f'{cmd} needs "name"')
    return devices.lookup(name)


def _info(s: Served) -> dict[str, Any]:
    return device_info(s.opts, s.device, s.server)


def stats_reply(devices: DeviceSet, name: str | None = None) -> dict[str, Any]:
    """The ``stats`` answer: ``snapshot`` with each device's keys in kebab-case (the device
    names stay as they are; metrics.py reads the snake_case snapshot)."""
    snap = snapshot(devices, name)
    snap["devices"] = {n: kebab_keys(st) for n, st in snap["devices"].items()}
    return snap


def snapshot(devices: DeviceSet, name: str | None = None) -> dict[str, Any]:
    if name is not None:
        devices.lookup(name)
    return {
        "ok": True,
        "time": time.time(),
        "devices": {
            s.opts.name: device_stats(s.device)
            for s in devices
            if name is None or s.opts.name == name
        },
    }


def metrics_snapshot(devices: DeviceSet, name: str | None = None) -> dict[str, Any]:
    """What metrics.py exports: each device's stats and settings, taken on the event loop."""
    snap = snapshot(devices, name)
    for s in devices:
        if s.opts.name in snap["devices"]:
            info = _info(s)
            snap["devices"][s.opts.name] = {"stats": snap["devices"][s.opts.name], "info": info}
    return snap


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
