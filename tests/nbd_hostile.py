"""A hostile NBD server: it negotiates like a real one, then answers requests wrongly.

Fixed-newstyle handshake (NBD protocol, doc/proto.md), just enough of it for libnbd:
structured replies are accepted, NBD_OPT_GO and NBD_OPT_INFO answered with the export's
size and flags (and block sizes when given), every other option refused.  In
transmission every request gets the reply that ``mode`` names.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from pathlib import Path

OPTS_MAGIC = b"IHAVEOPT"
REP_MAGIC = 0x3E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCTURED_MAGIC = 0x668E33EF
OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 6, 7, 8
REP_ACK, REP_INFO, REP_ERR_UNSUP = 1, 3, 0x80000001
INFO_EXPORT, INFO_BLOCK_SIZE = 0, 3
FLAG_HAS_FLAGS, FLAG_SEND_FLUSH = 1, 4
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2
CHUNK_OFFSET_DATA, REPLY_FLAG_DONE = 1, 1

MODES = ("bad-cookie", "chunk-out-of-bounds", "huge-chunk", "short-reply", "garbage")


class HostileNbdServer:
    def __init__(
        self,
        path: Path,
        mode: str = "bad-cookie",
        *,
        size: int = 1 << 20,
        block_sizes: tuple[int, int, int] | None = None,
    ) -> None:
        assert mode in MODES
        self.mode = mode
        self.size = size
        self.block_sizes = block_sizes
        self.uri = f"nbd+unix:///?socket={path}"
        self.connections = 0
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(str(path))
        self._listener.listen(8)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, EOFError):
            structured = self._negotiate(conn)
            while True:
                _, _, kind, cookie, offset, length = struct.unpack(">IHHQQI", _recv(conn, 28))
                if kind == CMD_DISC:
                    return
                if kind == CMD_WRITE:
                    _recv(conn, length)
                self._misbehave(conn, structured, cookie, offset, length)

    def _negotiate(self, conn: socket.socket) -> bool:
        conn.sendall(b"NBDMAGIC" + OPTS_MAGIC + struct.pack(">H", 1 | 2))
        _recv(conn, 4)
        structured = False
        while True:
            magic, opt, length = struct.unpack(">8sII", _recv(conn, 16))
            assert magic == OPTS_MAGIC
            _recv(conn, length)
            if opt == OPT_STRUCTURED_REPLY:
                structured = True
                self._reply(conn, opt, REP_ACK)
            elif opt in (OPT_INFO, OPT_GO):
                flags = FLAG_HAS_FLAGS | FLAG_SEND_FLUSH
                self._reply(conn, opt, REP_INFO, struct.pack(">HQH", INFO_EXPORT, self.size, flags))
                if self.block_sizes:
                    info = struct.pack(">HIII", INFO_BLOCK_SIZE, *self.block_sizes)
                    self._reply(conn, opt, REP_INFO, info)
                self._reply(conn, opt, REP_ACK)
                if opt == OPT_GO:
                    return structured
            else:
                self._reply(conn, opt, REP_ERR_UNSUP)

    @staticmethod
    def _reply(conn: socket.socket, opt: int, kind: int, data: bytes = b"") -> None:
        conn.sendall(struct.pack(">QIII", REP_MAGIC, opt, kind, len(data)) + data)

    def _misbehave(
        self, conn: socket.socket, structured: bool, cookie: int, offset: int, length: int
    ) -> None:
        if self.mode == "bad-cookie":
            conn.sendall(struct.pack(">IIQ", SIMPLE_MAGIC, 0, cookie ^ 0x5A5A) + bytes(length))
        elif self.mode == "chunk-out-of-bounds":
            # Data for the bytes just after the request: a buffer overflow if believed.
            payload = struct.pack(">Q", offset + length) + b"\xee" * length
            head = struct.pack(
                ">IHHQI", STRUCTURED_MAGIC, REPLY_FLAG_DONE, CHUNK_OFFSET_DATA, cookie, len(payload)
            )
            conn.sendall(head + payload)
        elif self.mode == "huge-chunk":
            head = struct.pack(
                ">IHHQI", STRUCTURED_MAGIC, REPLY_FLAG_DONE, CHUNK_OFFSET_DATA, cookie, 0xFFFFFFF0
            )
            conn.sendall(head + b"\xee" * 65536)
        elif self.mode == "short-reply":
            conn.sendall(struct.pack(">IIQ", SIMPLE_MAGIC, 0, cookie)[:7])
            conn.shutdown(socket.SHUT_RDWR)
        else:
            conn.sendall(b"\xde\xad\xbe\xef" * 1024)


def _recv(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf
