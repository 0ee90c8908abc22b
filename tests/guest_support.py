"""Fixtures and helpers for the end-to-end tests that boot a real guest (tests/test_guest.py).

The fixtures are ``guest_image`` (session) and ``backend``; import ``guest_image_fixture`` and
``backend_fixture`` into a test module (or a conftest) to use them.

The backend under test is ``python -m dataplane serve`` by default. Set
``DATAPLANE_GUEST_BACKEND=qsd`` to run the same tests against qemu-storage-daemon instead (this
validates the rig itself). The guest is built once into ``$DATAPLANE_GUEST_DIR`` (default
``~/.cache/dataplane/guest``) by scripts/build-guest.sh.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from dataplane.guest_workloads import check_image  # noqa: E402
from dataplane.guestvm import (  # noqa: E402
    GuestImage,
    GuestResult,
    die_with_parent,
    ensure_guest,
    find_qemu,
)

AIO_ENGINES = ["io_uring", "native", "threads"]
IMAGE_SIZE = 64 * 1024 * 1024
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
GUEST_TIMEOUT = float(os.environ.get("DATAPLANE_GUEST_TIMEOUT", "300"))

# A non-zero pattern whose period (4093, prime) is not a multiple of the sector size, so that a
# read from the wrong offset, or a zeroed range, is visible on the host.
PATTERN = bytes((i * 131) % 251 + 1 for i in range(4093))


def backend_kind() -> str:
    kind = os.environ.get("DATAPLANE_GUEST_BACKEND", "dataplane")
    if kind not in ("dataplane", "qsd"):
        raise ValueError(f"DATAPLANE_GUEST_BACKEND must be 'dataplane' or 'qsd', not {kind!r}")
    return kind


def make_pattern_image(path: Path, size: int = IMAGE_SIZE) -> Path:
    """A raw image of ``size`` bytes filled with :data:`PATTERN` (no zero bytes)."""
    reps = -(-size // len(PATTERN))
    path.write_bytes((PATTERN * reps)[:size])
    return path


def pattern_bytes(offset: int, length: int) -> bytes:
    """The original image bytes at ``[offset, offset + length)``."""
    start = offset % len(PATTERN)
    reps = -(-(start + length) // len(PATTERN))
    return (PATTERN * reps)[start : start + length]


def short_socket_dir() -> Path:
    """A fresh directory with a short path (UNIX socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="dp-sock-"))


@dataclass
class Backend:
    """A running vhost-user-blk backend process (dataplane or qemu-storage-daemon)."""

    kind: str
    proc: subprocess.Popen[bytes]
    socket: Path
    image: Path
    log_path: Path
    argv: list[str]
    returncode: int | None = field(default=None)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM the process and wait for it; returns its exit code (kills it on timeout)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(
                    f"{self.kind} did not exit within {timeout:.0f} s of SIGTERM; killed it\n"
                    f"--- {self.kind} log ---\n{self.log_text()}"
                ) from None
        self.returncode = self.proc.returncode
        return self.returncode


def _wait_ready(
    backend: Backend, ready: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if backend.proc.poll() is not None:
            raise AssertionError(
                f"{backend.kind} exited with code {backend.proc.returncode} before {what}\n"
                f"command: {' '.join(backend.argv)}\n--- {backend.kind} log ---\n"
                f"{backend.log_text()}"
            )
        time.sleep(0.05)
    backend.proc.kill()
    backend.proc.wait()
    raise AssertionError(
        f"{backend.kind} did not become ready ({what}) within {timeout:.0f} s\n"
        f"command: {' '.join(backend.argv)}\n--- {backend.kind} log ---\n{backend.log_text()}"
    )


def _spawn(kind: str, argv: list[str], socket: Path, image: Path, log_path: Path) -> Backend:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    with log_path.open("wb") as log:
        # SIGTERM if the test runner dies, so that no backend outlives it.
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
    return Backend(kind, proc, socket, image, log_path, argv)


def start_dataplane(
    socket: Path,
    image: Path,
    *,
    aio: str = "io_uring",
    num_queues: int = 1,
    log_path: Path,
    extra_args: tuple[str, ...] = (),
) -> Backend:
    """Start ``python -m dataplane serve`` and wait for "listening" in its log."""
    argv = [
        sys.executable, "-m", "dataplane", "serve",
        "--socket", str(socket),
        "--image", str(image),
        "--aio", aio,
        "--num-queues", str(num_queues),
        *extra_args,
    ]  # fmt: skip
    backend = _spawn("dataplane", argv, socket, image, log_path)
    _wait_ready(backend, lambda: "listening" in backend.log_text(), "logging 'listening'")
    return backend


def start_qsd(
    socket: Path,
    image: Path,
    *,
    aio: str = "io_uring",
    num_queues: int = 1,
    log_path: Path,
) -> Backend:
    """Start qemu-storage-daemon exporting ``image`` as vhost-user-blk; wait for its socket."""
    qsd = shutil.which("qemu-storage-daemon")
    if qsd is None:
        pytest.skip("qemu-storage-daemon not installed")
    argv = [
        qsd,
        "--blockdev",
        f"driver=file,node-name=f0,filename={image},cache.direct=on,aio={aio}",
        "--export",
        "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,"
        f"addr.path={socket},writable=on,num-queues={num_queues}",
    ]
    backend = _spawn("qsd", argv, socket, image, log_path)
    _wait_ready(backend, socket.exists, f"creating {socket}")
    return backend


BackendFactory = Callable[..., Backend]


def watch(*backends: Backend) -> Callable[[], str | None]:
    """An ``abort_check`` for run_guest: a reason to stop once any backend process has died."""

    def check() -> str | None:
        for b in backends:
            rc = b.proc.poll()
            if rc is not None:
                return f"{b.kind} backend exited with code {rc} during the guest run"
        return None

    return check


@pytest.fixture(scope="session", name="guest_image")
def guest_image_fixture() -> GuestImage:
    """The built guest; skips (with the reason) when QEMU is absent."""
    if find_qemu() is None:
        pytest.skip("QEMU (qemu-system-x86_64) not installed: guest tests skipped")
    if backend_kind() == "qsd" and shutil.which("qemu-storage-daemon") is None:
        pytest.skip("DATAPLANE_GUEST_BACKEND=qsd but qemu-storage-daemon is not installed")
    return ensure_guest()


@pytest.fixture(name="backend")
def backend_fixture(tmp_path: Path) -> Iterator[BackendFactory]:
    """``backend(image, aio=..., num_queues=...) -> Backend``, stopped and checked at teardown.

    At teardown each backend gets SIGTERM; a dataplane backend must exit 0 and remove its
    socket. Its log is printed (pytest shows it when the test fails).
    """
    started: list[Backend] = []
    sock_dir = short_socket_dir()
    kind = backend_kind()

    def start(
        image: Path, *, aio: str = "io_uring", num_queues: int = 1, extra_args: tuple[str, ...] = ()
    ) -> Backend:
        n = len(started)
        socket = sock_dir / f"vub{n}.sock"
        log_path = tmp_path / f"backend{n}-{kind}.log"
        if kind == "qsd":
            b = start_qsd(socket, image, aio=aio, num_queues=num_queues, log_path=log_path)
        else:
            b = start_dataplane(
                socket, image, aio=aio, num_queues=num_queues, log_path=log_path,
                extra_args=extra_args,
            )  # fmt: skip
        started.append(b)
        return b

    try:
        yield start
    finally:
        errors = []
        for b in started:
            try:
                rc = b.stop()
            except AssertionError as e:
                errors.append(str(e))
                continue
            print(f"--- {b.kind} log ({b.log_path}), exit code {rc} ---\n{b.log_text()}")
            if b.kind == "dataplane":
                if rc != 0:
                    errors.append(f"dataplane exited with code {rc} after SIGTERM")
                if b.socket.exists():
                    errors.append(f"dataplane left its socket {b.socket} behind")
        shutil.rmtree(sock_dir, ignore_errors=True)
        if errors:
            pytest.fail("\n".join(errors))


def assert_guest_ok(
    result: GuestResult, images: dict[str, Path], sizes: dict[str, int] | None = None
) -> None:
    """The guest script passed, and every image matches what its guest device reported."""
    print(
        f"guest: boot {result.boot_seconds or float('nan'):.1f} s, "
        f"total {result.total_seconds:.1f} s, rc {result.rc}"
    )
    for line in result.lines("DP-INFO") + result.lines("DP-SKIP") + result.lines("DP-IRQ"):
        print(line)
    assert result.rc == 0, (
        f"guest workload failed with rc {result.rc}:\n"
        + "\n".join(result.lines("DP-FAIL"))
        + f"\n--- console tail ---\n{result.tail()}"
    )
    for device, image in images.items():
        assert f"DP-OK {device}" in result.output, f"no DP-OK for {device}:\n{result.tail()}"
        problems = check_image(image, result.output, device)
        assert not problems, "\n".join(problems)
        if sizes is not None:
            assert image.stat().st_size == sizes[device], f"{image} changed size"
