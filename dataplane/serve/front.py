"""What the process needs of the server of one device's socket (``DeviceFront``): the device's
vhost-user side as the device set, the management socket and ``/metrics`` see it.

server.py's ``DeviceServer`` is one; the process (process.py) hands the device set the
class to build them with, so that the set and the management commands sit beside the
server, not above it.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["DeviceFront"]


class DeviceFront(Protocol):
    """The server of one device's socket, one vhost-user connection at a time."""

    connected: bool  # a frontend is connected now
    connections: int  # frontends that connected, ever

    async def serve_forever(self) -> None:
        """Accept and serve connections until cancelled (removal, shutdown)."""
        ...

    async def config_changed(self) -> bool | str:
        """Tell a connected frontend the config space changed (resize): True, or why it
        was not told."""
        ...

    def guest_memory_faulted(self) -> None:
        """SIGBUS containment woke the process: drop the connection if its memory shrank."""
        ...

    def close(self) -> None:
        """Close the listening socket (and remove its file, if this process bound it)."""
        ...
