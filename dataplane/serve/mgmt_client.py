"""A blocking client of the management socket (``dataplane stat``, tests)."""

from __future__ import annotations

import contextlib
import json
import socket
from pathlib import Path
from typing import Any

__all__ = ["MgmtClient", "encode_line"]


def encode_line(obj: dict[str, Any]) -> bytes:
    """One JSON-lines message: compact JSON and a newline."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class MgmtClient(contextlib.AbstractContextManager):
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
        self.sock.sendall(encode_line({"cmd": cmd, **fields}))
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

    def __exit__(self, *exc: object) -> None:  # __enter__: AbstractContextManager's
        self.close()
