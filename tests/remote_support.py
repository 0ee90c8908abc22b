"""Fixtures for the tests of remote disks: NBD servers, and ``dataplane serve`` on a disk.

Import ``servers_fixture`` and ``serve_fixture`` into a test module to use the ``servers``
and ``serve`` fixtures.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from guest_support import start_dataplane
from remote_servers import NbdServer

from dataplane.guest.harness.processes import BackendProcess, short_socket_dir

ServeFactory = Callable[..., BackendProcess]


@pytest.fixture(name="servers")
def servers_fixture() -> Iterator[Callable[[NbdServer], NbdServer]]:
    """``servers(server)`` starts an NbdServer; every one is stopped at teardown."""
    started: list[NbdServer] = []

    def start(server: NbdServer) -> NbdServer:
        started.append(server)
        return server.start()

    yield start
    for s in started:
        s.stop()


@pytest.fixture(name="serve")
def serve_fixture(tmp_path: Path) -> Iterator[ServeFactory]:
    """``serve(image, *flags)``: ``dataplane serve`` with device vblk0 on ``a.sock`` and the
    management socket ``m.sock`` beside it.  A remote ``image`` (a string) gets no ``--aio``
    and ``--cache``.  At teardown the backend must exit 0 on SIGTERM and remove its socket."""
    started: list[BackendProcess] = []
    sock_dir = short_socket_dir()

    def start(image: Path | str, *flags: str) -> BackendProcess:
        remote = isinstance(image, str)
        b = start_dataplane(
            sock_dir / "a.sock", image, log_path=tmp_path / f"serve{len(started)}.log",
            aio=None if remote else "threads", cache=None if remote else "writeback",
            extra_args=("--mgmt", str(sock_dir / "m.sock"), *flags),
        )  # fmt: skip
        started.append(b)
        return b

    try:
        yield start
    finally:
        codes = [b.stop() for b in started]  # (one after another, they may share a path)
        assert codes == [0] * len(started), f"dataplane's exit codes on SIGTERM: {codes}"
        assert not any(b.socket.exists() for b in started)
        shutil.rmtree(sock_dir, ignore_errors=True)


def listening_line(backend: BackendProcess) -> str:
    """The backend's log line that says its device listens."""
    return next(line for line in backend.log_text().splitlines() if "listening on" in line)
