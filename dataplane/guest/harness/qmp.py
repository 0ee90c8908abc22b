"""A small QMP client: commands and events over QEMU's ``-qmp unix:PATH,server=on,wait=off``.

Standard library only (the tests, the demo and scripts/migrate-loop.py use it).  Events that
arrive while a command waits for its answer are kept for :meth:`Qmp.wait_event`.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Qmp", "QmpError"]


class QmpError(RuntimeError):
    """QEMU answered a command with an error, or the monitor went away."""


class Qmp:
    """One QMP connection, past the greeting and ``qmp_capabilities``."""

    def __init__(self, path: Path, *, timeout: float = 60.0) -> None:
        """Connect to ``path``, waiting up to ``timeout`` seconds for QEMU to create it."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() >= deadline:
                    raise QmpError(f"no QMP monitor at {path} within {timeout:.0f} s") from None
                time.sleep(0.1)
        self.sock = sock
        self.sock.settimeout(timeout)
        self._file = sock.makefile("rw", encoding="utf-8")
        self.events: list[dict[str, Any]] = []
        self.greeting = self._read()
        self.execute("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        line = self._file.readline()
        if not line:
            raise QmpError("QEMU closed its QMP monitor")
        return json.loads(line)

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run ``command``; its ``return`` value, or QmpError with QEMU's description."""
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._file.write(json.dumps(msg) + "\n")
        self._file.flush()
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise QmpError(f"{command}: {reply['error'].get('desc', reply['error'])}")
            elif "return" in reply:
                return reply["return"]

    def wait_event(
        self,
        name: str,
        timeout: float,
        match: Callable[[dict[str, Any]], bool] = lambda data: True,
    ) -> dict[str, Any]:
        """The first event ``name`` whose data ``match`` accepts (kept ones first), taken from
        the queue; QmpError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev["event"] == name and match(ev.get("data", {})):
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError(f"no {name} event within {timeout:.0f} s")
            self.sock.settimeout(left)
            try:
                self.events.append(self._read())
            except TimeoutError:
                raise QmpError(f"no {name} event within {timeout:.0f} s") from None

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self.sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
