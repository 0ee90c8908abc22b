"""A vhost-user frontend client: what QEMU does on its side of the socket.

Blocking and small on purpose: the test suite uses it against the server,
and the ring-replay benchmark builds on it to drive any vhost-user-blk
backend (ours or qemu-storage-daemon).
"""

from __future__ import annotations

import array
import os
import socket
import time
from pathlib import Path

from dataplane.errors import ProtocolError
from dataplane.vhost import messages as vu
from dataplane.vhost.encoding import encode_body, payload_fds


class Frontend:
    """One connection to a vhost-user backend."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.protocol_features = 0

    @classmethod
    def connect(cls, path: Path, *, wait: float = 10.0) -> Frontend:
        """Connect, retrying while the backend is still starting."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return cls(path)
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Frontend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw messages -----------------------------------------------------------

    def send(
        self, request: vu.Request, payload: vu.Payload = None, *, need_reply: bool = False
    ) -> None:
        flags = vu.VERSION | (vu.FLAG_NEED_REPLY if need_reply else 0)
        self.send_raw(vu.encode_message(request, flags, encode_body(payload)), payload_fds(payload))

    def send_raw(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            sent = self.sock.sendmsg([data], anc)
            data = data[sent:]
        if data:
            self.sock.sendall(data)

    def recv_reply(self, request: vu.Request) -> bytes:
        header = self._recv_exact(vu.HEADER_SIZE)
        code, flags, size = vu.HEADER.unpack(header)
        if code != request or flags != (vu.VERSION | vu.FLAG_REPLY):
            raise ProtocolError(f"reply {code} flags {flags:#x} does not answer {request.name}")
        return self._recv_exact(size)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("backend closed the connection")
            buf += chunk
        return bytes(buf)

    def request(self, request: vu.Request, payload: vu.Payload = None) -> bytes | None:
        """Send one request; return its reply body, or check its REPLY_ACK if one is due."""
        has_reply = vu.REQUESTS[request].has_reply if request in vu.REQUESTS else False
        ack = not has_reply and bool(self.protocol_features & (1 << vu.ProtocolFeature.REPLY_ACK))
        self.send(request, payload, need_reply=ack)
        if has_reply:
            return self.recv_reply(request)
        if ack:
            status = int.from_bytes(self.recv_reply(request), "little")
            if status:
                raise ProtocolError(f"{request.name} failed: backend replied {status}")
        return None

    def _u64(self, request: vu.Request) -> int:
        body = self.request(request)
        assert body is not None
        if len(body) != 8:
            raise ProtocolError(f"{request.name} reply has {len(body)} bytes")
        return int.from_bytes(body, "little")

    # -- typed requests ---------------------------------------------------------

    def get_features(self) -> int:
        return self._u64(vu.Request.GET_FEATURES)

    def set_features(self, features: int) -> None:
        self.request(vu.Request.SET_FEATURES, features)

    def get_protocol_features(self) -> int:
        return self._u64(vu.Request.GET_PROTOCOL_FEATURES)

    def set_protocol_features(self, features: int) -> None:
        self.request(vu.Request.SET_PROTOCOL_FEATURES, features)
        self.protocol_features = features

    def get_queue_num(self) -> int:
        return self._u64(vu.Request.GET_QUEUE_NUM)

    def set_owner(self) -> None:
        self.request(vu.Request.SET_OWNER)

    def set_mem_table(self, table: vu.MemTable) -> None:
        self.request(vu.Request.SET_MEM_TABLE, table)

    def set_vring_num(self, index: int, num: int) -> None:
        self.request(vu.Request.SET_VRING_NUM, vu.VringState(index, num))

    def set_vring_base(self, index: int, base: int) -> None:
        self.request(vu.Request.SET_VRING_BASE, vu.VringState(index, base))

    def set_vring_addr(self, addr: vu.VringAddr) -> None:
        self.request(vu.Request.SET_VRING_ADDR, addr)

    def set_vring_kick(self, index: int, fd: int | None) -> None:
        self.request(vu.Request.SET_VRING_KICK, vu.VringFile(index, fd))

    def set_vring_call(self, index: int, fd: int | None) -> None:
        self.request(vu.Request.SET_VRING_CALL, vu.VringFile(index, fd))

    def set_vring_err(self, index: int, fd: int | None) -> None:
        self.request(vu.Request.SET_VRING_ERR, vu.VringFile(index, fd))

    def set_vring_enable(self, index: int, enable: bool) -> None:
        self.request(vu.Request.SET_VRING_ENABLE, vu.VringState(index, int(enable)))

    def get_vring_base(self, index: int) -> int:
        body = self.request(vu.Request.GET_VRING_BASE, vu.VringState(index, 0))
        assert body is not None
        state = vu.VringState(*vu.VRING_STATE.unpack(body))
        if state.index != index:
            raise ProtocolError(f"GET_VRING_BASE answered for ring {state.index}, not {index}")
        return state.num

    def get_config(self, offset: int, size: int) -> bytes:
        body = self.request(vu.Request.GET_CONFIG, vu.Config(offset, size, 0, bytes(size)))
        assert body is not None
        if len(body) != 12 + size:
            raise ProtocolError(f"GET_CONFIG reply has {len(body)} bytes, expected {12 + size}")
        return body[12:]

    def set_config(self, offset: int, data: bytes) -> None:
        self.request(vu.Request.SET_CONFIG, vu.Config(offset, len(data), 0, data))

    def get_max_mem_slots(self) -> int:
        return self._u64(vu.Request.GET_MAX_MEM_SLOTS)

    def add_mem_reg(self, region: vu.RegionSpec, fd: int) -> None:
        """ADD_MEM_REG: one more region (``fd`` is sent, and stays ours)."""
        self.request(vu.Request.ADD_MEM_REG, vu.MemReg(region, fd))

    def rem_mem_reg(self, region: vu.RegionSpec) -> None:
        self.request(vu.Request.REM_MEM_REG, vu.MemReg(region, None))

    def get_inflight_fd(self, num_queues: int, queue_size: int) -> vu.Inflight:
        """GET_INFLIGHT_FD: the backend's new area, with its fd (ours to close)."""
        self.send(vu.Request.GET_INFLIGHT_FD, vu.Inflight(0, 0, num_queues, queue_size))
        want = vu.HEADER_SIZE + vu.INFLIGHT.size
        data, fds, _, _ = socket.recv_fds(self.sock, want, 1)
        try:
            data += self._recv_exact(want - len(data)) if 0 < len(data) < want else b""
            code, flags, size = vu.HEADER.unpack_from(data)
            if code != vu.Request.GET_INFLIGHT_FD or flags != (vu.VERSION | vu.FLAG_REPLY):
                raise ProtocolError(
                    f"reply {code} flags {flags:#x} does not answer GET_INFLIGHT_FD"
                )
            if size != vu.INFLIGHT.size or len(fds) != 1:
                raise ProtocolError(f"GET_INFLIGHT_FD reply of {size} bytes with {len(fds)} fds")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return vu.Inflight(*vu.INFLIGHT.unpack_from(data, vu.HEADER_SIZE), fds[0])

    def set_log_base(self, log: vu.LogBase) -> None:
        """SET_LOG_BASE (LOG_SHMFD): share the dirty log (its fd is sent, and stays ours);
        the backend replies once it uses it (a u64, or nothing as DPDK's does)."""
        body = self.request(vu.Request.SET_LOG_BASE, log)
        if body is not None and len(body) not in (0, 8):
            raise ProtocolError(f"SET_LOG_BASE reply has {len(body)} bytes")

    def set_inflight_fd(self, area: vu.Inflight) -> None:
        """SET_INFLIGHT_FD: hand back an area (its fd is sent, and stays ours)."""
        self.request(vu.Request.SET_INFLIGHT_FD, area)
