"""The messages about the device's config space: GET_CONFIG and SET_CONFIG from the
frontend, and the backend channel (BACKEND_REQ: SET_BACKEND_REQ_FD) on which the backend
tells the frontend the space changed (resize's CONFIG_CHANGE_MSG).  A write-cache change
reaches the threads as every data-path change does, through each one's command queue.
Part of handler.Session, which holds the state these use.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from dataplane.serve import backend_channel
from dataplane.vhost.messages import BackendReqFd, Config

if TYPE_CHECKING:
    from dataplane.serve.blkdev import BlkDevice
    from dataplane.vhost.protocol import BackendConnection

__all__ = ["ConfigSpaceMessages"]


class ConfigSpaceMessages:
    device: BlkDevice
    conn: BackendConnection
    backend: backend_channel.BackendChannel | None

    async def _get_config(self, c: Config) -> Config:
        space = self.device.disk.config_space()
        return Config(c.offset, c.size, c.flags, space[c.offset : c.offset + c.size])

    async def _set_config(self, c: Config) -> bool:
        if self.device.disk.read_only:
            return False
        disk = self.device.disk
        if not disk.write_config(c.offset, c.data):
            return False
        # A data-path change like any other: through each thread's command queue (a dead
        # thread serves nothing: its device has failed).
        wb = disk.writeback
        live = [t for t in self.device.threads if not t.dead]
        await asyncio.gather(*(asyncio.wrap_future(t.set_writeback(wb)) for t in live))
        return True

    async def _set_backend_req_fd(self, b: BackendReqFd) -> None:
        if self.backend is not None:
            self.backend.close()
        self.backend = backend_channel.open_channel(b.fd, self.conn.protocol_features)

    async def config_changed(self) -> None:
        """Tell the frontend the config space changed (resize); BackendChannelError if not."""
        await backend_channel.config_changed(self.backend, self.conn.protocol_features)
