"""Fixtures and helpers for the end-to-end tests that boot a real guest (tests/e2e/test_guest.py).

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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dataplane.guest.harness import processes as backends
from dataplane.guest.harness.guest_image import GuestImage, ensure_guest
from dataplane.guest.harness.processes import BackendFailed, short_socket_dir, start_dataplane
from dataplane.guest.harness.processes import BackendProcess as Backend
from dataplane.guest.harness.qemu import GuestResult, Qemu, find_qemu
from dataplane.guest.harness.workloads import check_image

# start_dataplane is the harness's (one for tests and tools): a backend that fails to start
# raises BackendFailed, whose message carries its log.

AIO_ENGINES = ["io_uring", "native", "threads"]
IMAGE_SIZE = 64 * 1024 * 1024
GUEST_TIMEOUT = float(os.environ.get("DATAPLANE_GUEST_TIMEOUT", "300"))

# A non-zero pattern whose period (4093, prime) is not a multiple of the sector size, so that a
# read from the wrong offset, or a zeroed range, is visible on the host.
DEPS = "scripts/install-deps.sh installs it"

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


def start_qsd(socket: Path, image: Path, **kw) -> Backend:
    """qemu-storage-daemon on ``image``; skips the test where it is not installed."""
    if shutil.which("qemu-storage-daemon") is None:
        pytest.skip(f"qemu-storage-daemon not installed (Debian package qemu-system-x86; {DEPS})")
    return backends.start_qsd(socket, image, **kw)


BackendFactory = Callable[..., Backend]


def qemu_or_skip(version: str) -> Qemu:
    """QEMU ``version`` (harness/qemu.py QEMU_VERSIONS); skips the test, saying how to
    install it, where it is absent."""
    qemu = find_qemu(version)
    if qemu is None:
        pytest.skip(f"QEMU {version} not installed: run scripts/install-qemu10.sh as root")
    return qemu


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
        pytest.skip(
            f"QEMU (qemu-system-x86_64) not installed (Debian package qemu-system-x86; {DEPS})"
        )
    if backend_kind() == "qsd" and shutil.which("qemu-storage-daemon") is None:
        pytest.skip(
            "DATAPLANE_GUEST_BACKEND=qsd but qemu-storage-daemon is not installed "
            f"(Debian package qemu-system-x86; {DEPS})"
        )
    return ensure_guest()


@pytest.fixture(name="backend")
def backend_fixture(tmp_path: Path) -> Iterator[BackendFactory]:
    """``backend(image, aio=..., num_queues=...) -> Backend``, stopped and checked at teardown.

    At teardown each backend gets SIGTERM; a dataplane backend must exit 0 and remove its
    socket. Its log is under tmp_path: a failing test shows its tail (conftest.py).
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
            except BackendFailed as e:
                errors.append(str(e))
                continue
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
