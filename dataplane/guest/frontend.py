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
from dataplane.vhost.encoding import encode_body, payload_fds
from dataplane.vhost.messages import (
    FLAG_NEED_REPLY,
    FLAG_REPLY,
    HEADER,
    HEADER_SIZE,
    INFLIGHT,
    REQUESTS,
    VERSION,
    VRING_STATE,
    Config,
    Inflight,
    LogBase,
    MemReg,
    MemTable,
    Payload,
    ProtocolFeature,
    RegionSpec,
    Request,
    VringAddr,
    VringFile,
    VringState,
    encode_message,
)


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

    def send(self, request: Request, payload: Payload = None, *, need_reply: bool = False) -> None:
        flags = VERSION | (FLAG_NEED_REPLY if need_reply else 0)
        self.send_raw(encode_message(request, flags, encode_body(payload)), payload_fds(payload))

    def send_raw(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> None:
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            sent = self.sock.sendmsg([data], anc)
            data = data[sent:]
        if data:
            self.sock.sendall(data)

    def recv_reply(self, request: Request) -> bytes:
        header = self._recv_exact(HEADER_SIZE)
        code, flags, size = HEADER.unpack(header)
        if code != request or flags != (VERSION | FLAG_REPLY):
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

    def request(self, request: Request, payload: Payload = None) -> bytes | None:
        """Send one request; return its reply body, or check its REPLY_ACK if one is due."""
        has_reply = REQUESTS[request].has_reply if request in REQUESTS else False
        ack = not has_reply and bool(self.protocol_features & (1 << ProtocolFeature.REPLY_ACK))
        self.send(request, payload, need_reply=ack)
        if has_reply:
            return self.recv_reply(request)
        if ack:
            status = int.from_bytes(self.recv_reply(request), "little")
            if status:
                raise ProtocolError(f"{request.name} failed: backend replied {status}")
        return None

    def _u64(self, request: Request) -> int:
        body = self.request(request)
        assert body is not None
        if len(body) != 8:
            raise ProtocolError(f"{request.name} reply has {len(body)} bytes")
        return int.from_bytes(body, "little")

    # -- typed requests ---------------------------------------------------------

    def get_features(self) -> int:
        return self._u64(Request.GET_FEATURES)

    def set_features(self, features: int) -> None:
        self.request(Request.SET_FEATURES, features)

    def get_protocol_features(self) -> int:
        return self._u64(Request.GET_PROTOCOL_FEATURES)

    def set_protocol_features(self, features: int) -> None:
        self.request(Request.SET_PROTOCOL_FEATURES, features)
        self.protocol_features = features

    def get_queue_num(self) -> int:
        return self._u64(Request.GET_QUEUE_NUM)

    def set_owner(self) -> None:
        self.request(Request.SET_OWNER)

    def set_mem_table(self, table: MemTable) -> None:
        self.request(Request.SET_MEM_TABLE, table)

    def set_vring_num(self, index: int, num: int) -> None:
        self.request(Request.SET_VRING_NUM, VringState(index, num))

    def set_vring_base(self, index: int, base: int) -> None:
        self.request(Request.SET_VRING_BASE, VringState(index, base))

    def set_vring_addr(self, addr: VringAddr) -> None:
        self.request(Request.SET_VRING_ADDR, addr)

    def set_vring_kick(self, index: int, fd: int | None) -> None:
        self.request(Request.SET_VRING_KICK, VringFile(index, fd))

    def set_vring_call(self, index: int, fd: int | None) -> None:
        self.request(Request.SET_VRING_CALL, VringFile(index, fd))

    def set_vring_err(self, index: int, fd: int | None) -> None:
        self.request(Request.SET_VRING_ERR, VringFile(index, fd))

    def set_vring_enable(self, index: int, enable: bool) -> None:
        self.request(Request.SET_VRING_ENABLE, VringState(index, int(enable)))

    def get_vring_base(self, index: int) -> int:
        body = self.request(Request.GET_VRING_BASE, VringState(index, 0))
        assert body is not None
        state = VringState(*VRING_STATE.unpack(body))
        if state.index != index:
            raise ProtocolError(f"GET_VRING_BASE answered for ring {state.index}, not {index}")
        return state.num

    def get_config(self, offset: int, size: int) -> bytes:
        body = self.request(Request.GET_CONFIG, Config(offset, size, 0, bytes(size)))
        assert body is not None
        if len(body) != 12 + size:
            raise ProtocolError(f"GET_CONFIG reply has {len(body)} bytes, expected {12 + size}")
        return body[12:]

    def set_config(self, offset: int, data: bytes) -> None:
        self.request(Request.SET_CONFIG, Config(offset, len(data), 0, data))

    def get_max_mem_slots(self) -> int:
        return self._u64(Request.GET_MAX_MEM_SLOTS)

    def add_mem_reg(self, region: RegionSpec, fd: int) -> None:
        """ADD_MEM_REG: one more region (``fd`` is sent, and stays ours)."""
        self.request(Request.ADD_MEM_REG, MemReg(region, fd))

    def rem_mem_reg(self, region: RegionSpec) -> None:
        self.request(Request.REM_MEM_REG, MemReg(region, None))

    def get_inflight_fd(self, num_queues: int, queue_size: int) -> Inflight:
        """GET_INFLIGHT_FD: the backend's new area, with its fd (ours to close)."""
        self.send(Request.GET_INFLIGHT_FD, Inflight(0, 0, num_queues, queue_size))
        want = HEADER_SIZE + INFLIGHT.size
        data, fds, _, _ = socket.recv_fds(self.sock, want, 1)
        try:
            data += self._recv_exact(want - len(data)) if 0 < len(data) < want else b""
            code, flags, size = HEADER.unpack_from(data)
            if code != Request.GET_INFLIGHT_FD or flags != (VERSION | FLAG_REPLY):
                raise ProtocolError(
                    f"reply {code} flags {flags:#x} does not answer GET_INFLIGHT_FD"
                )
            if size != INFLIGHT.size or len(fds) != 1:
                raise ProtocolError(f"GET_INFLIGHT_FD reply of {size} bytes with {len(fds)} fds")
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return Inflight(*INFLIGHT.unpack_from(data, HEADER_SIZE), fds[0])

    def set_log_base(self, log: LogBase) -> None:
        """SET_LOG_BASE (LOG_SHMFD): share the dirty log (its fd is sent, and stays ours);
        the backend replies once it uses it (a u64, or nothing as DPDK's does)."""
        body = self.request(Request.SET_LOG_BASE, log)
        if body is not None and len(body) not in (0, 8):
            raise ProtocolError(f"SET_LOG_BASE reply has {len(body)} bytes")

    def set_inflight_fd(self, area: Inflight) -> None:
        """SET_INFLIGHT_FD: hand back an area (its fd is sent, and stays ours)."""
        self.request(Request.SET_INFLIGHT_FD, area)
