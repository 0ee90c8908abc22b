"""atheris target: the vhost-user message parser (dataplane/vhost/protocol.py + messages.py).

    .venv/bin/python fuzz/vhost_fuzz.py [libFuzzer args...] CORPUS...   (or scripts/fuzz.sh vhost S)

Bytes plus fd counts in, events out.  The input is a sequence of chunks, each
``u16 length, u8 fd count, length bytes``: what one recvmsg returned, with
that many fds (real eventfds) riding on it.  Each chunk is fed to a
``BackendConnection``; every complete message is taken out.  Checked:

- the parser raises nothing but ProtocolError;
- every fd is closed exactly once: by us for the fds a message hands over,
  by the connection for the rest (an error, or close()); none leaks, none is
  closed twice (os.close of a closed fd raises here);
- sans-IO: feeding the same stream one byte at a time (each chunk's fds on
  its first byte) gives the same events, so where the socket splits the
  stream never changes what is parsed, nor which message an fd belongs to.
"""

from __future__ import annotations

import os
import struct
import sys

import atheris

with atheris.instrument_imports():
    from dataplane.errors import ProtocolError
    from dataplane.vhost.encoding import payload_fds
    from dataplane.vhost.protocol import BackendConnection

CHUNK = struct.Struct("<HB")
MAX_FDS_PER_CHUNK = 10  # more than the 8 any message may carry


def chunks(data: bytes) -> list[tuple[bytes, int]]:
    out = []
    while len(data) >= CHUNK.size:
        n, nfds = CHUNK.unpack_from(data)
        data = data[CHUNK.size :]
        out.append((data[:n], nfds % (MAX_FDS_PER_CHUNK + 1)))
        data = data[n:]
    return out


def events(stream: list[tuple[bytes, int]], *, bytewise: bool) -> list[object]:
    conn = BackendConnection()
    out: list[object] = []
    try:
        for data, nfds in stream:
            pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
            for k, piece in enumerate(pieces or [b""]):
                fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(nfds if k == 0 else 0)]
                conn.receive_data(piece, fds)
                while (msg := conn.next_message()) is not None:
                    owned = payload_fds(msg.payload)
                    for fd in owned:
                        os.close(fd)  # ours now: raises if the parser closed it too
                    out.append((msg.request, msg.flags, _shape(msg.payload), len(owned)))
    except ProtocolError as e:
        out.append(("error", str(e).split(":")[0]))
    finally:
        conn.close()
    return out


def _shape(payload: object) -> object:
    """The payload with its fd numbers left out (they differ between runs)."""
    if hasattr(payload, "fds"):
        return (payload.regions, len(payload.fds))  # type: ignore[attr-defined]
    if hasattr(payload, "fd"):
        return (payload.index, payload.fd is None)  # type: ignore[attr-defined]
    return payload


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_one_input(data: bytes) -> None:
    stream = chunks(data)
    before = open_fds()
    whole = events(stream, bytewise=False)
    leaked = open_fds() - before
    if leaked:
        raise AssertionError(f"{leaked} fd(s) leaked: {whole}")
    if sum(len(d) for d, _ in stream) <= 4096:  # byte by byte is slow for big inputs
        single = events(stream, bytewise=True)
        if single != whole:
            raise AssertionError(f"chunking changed the events:\n{whole}\n{single}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
