"""What a run measures: ``ours``, ``qsd``, ``socket:PATH`` or ``fio``.

``ours`` and ``qsd`` are started for each run (they lock the image, so two
cannot hold it at once) on a socket in a private temporary directory, and
stopped with SIGTERM after it.  ``socket:PATH`` is a backend someone else
runs; its pid, for the CPU column, comes from SO_PEERCRED.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import dataplane
from dataplane import __version__
from dataplane.errors import ProtocolError, UsageError
from dataplane.guest.bench import remote
from dataplane.guest.bench.errors import BenchError
from dataplane.guest.bench.procstat import peer_pid
from dataplane.guest.frontend import Frontend
from dataplane.guest.harness.processes import (
    BackendFailed,
    BackendProcess,
    dataplane_command,
    start_dataplane,
    start_qsd,
)
from dataplane.guest.virtio_blk import negotiate
from dataplane.spec.choices import DEFAULT_POLL_US

READY_TIMEOUT = 30.0
PACKAGE_ROOT = Path(dataplane.__file__).resolve().parents[1]


@dataclass(frozen=True)
class TargetSpec:
    kind: str
    label: str
    path: Path | None = None  # socket:PATH
    dirty_log: bool = False  # --dirty-log: the bench plays a migrating QEMU (guest/dirty_log.py)

    @property
    def vhost_user(self) -> bool:
        return self.kind in VHOST_USER_KINDS


VHOST_USER_KINDS = ("ours", "qsd", "socket")
DIRTY_LOG_SUFFIX = "+dirty-log"


def with_dirty_log(targets: list[TargetSpec], mode: str | None) -> list[TargetSpec]:
    """``--dirty-log on``: every vhost-user target logs; ``both``: each runs twice a round,
    as itself and logging (labelled TARGET+dirty-log), side by side."""
    if mode is None:
        return targets
    out: list[TargetSpec] = []
    for t in targets:
        logging = replace(t, label=t.label + DIRTY_LOG_SUFFIX, dirty_log=True)
        if not t.vhost_user:
            out.append(t)
        else:
            out += [t, logging] if mode == "both" else [logging]
    return out


def parse_target(text: str) -> TargetSpec:
    if text in ("ours", "qsd", "fio", "limit"):
        return TargetSpec(text, text)
    if text.startswith("socket:") and len(text) > len("socket:"):
        path = Path(text[len("socket:") :])
        check_listening(path, text)
        return TargetSpec("socket", text, path)
    raise UsageError(f"unknown target {text!r}: use ours, qsd, fio, limit or socket:PATH")


@dataclass
class BackendSettings:
    """How ``ours`` and ``qsd`` serve the image (and what fio runs on)."""

    image: Path | str | None  # str: a remote disk (bench/remote.py)
    aio: str = "io_uring"
    cache: str = "none"
    num_queues: int = 1
    queue_size: int = 256
    null_size: int = 1 << 30
    ours_args: tuple[str, ...] = ()
    ours_cmd: tuple[str, ...] | None = None  # another dataplane build: ("venv/bin/dataplane",)
    mgmt: bool = False  # ours with a management socket (bench --layers reads its stats)
    log_dir: Path | None = None
    scratch: Path | None = None  # sockets, and the placeholder image for ours with null
    _remote_size: int | None = None

    @property
    def null(self) -> bool:
        return self.aio == "null"

    @property
    def remote(self) -> bool:
        return remote.is_remote(self.image)

    def capacity(self) -> int:
        """Device size in bytes (the image's, or --null-size for the null engine without one)."""
        if isinstance(self.image, str):
            if self._remote_size is None:
                self._remote_size = remote.capacity(self.image)
            return self._remote_size
        if self.image is not None:
            return self.image.stat().st_size
        return self.null_size


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise UsageError(f"{name} is not installed (on Debian: apt-get install {package})")
    return path


def _ours_image(s: BackendSettings) -> tuple[Path | str, str | None]:
    if s.remote:
        return s.image, None  # type: ignore[return-value]
    if s.image is not None:
        return s.image, s.cache
    # serve always opens an image; the null engine never touches it.
    assert s.scratch is not None
    placeholder = s.scratch / "null.img"
    if not placeholder.exists():
        with placeholder.open("wb") as f:
            f.truncate(s.null_size)
    return placeholder, "writeback"


def mgmt_socket(socket: Path) -> Path:
    """Where ours serves its management socket, with ``BackendSettings.mgmt``."""
    return socket.with_suffix(".mgmt")


def start_ours(s: BackendSettings, socket: Path, log_path: Path) -> BackendProcess:
    image, cache = _ours_image(s)
    mgmt = ("--mgmt", str(mgmt_socket(socket))) if s.mgmt else ()
    return start_dataplane(
        socket,
        image,
        log_path=log_path,
        aio=None if s.remote else s.aio,
        cache=cache,
        num_queues=s.num_queues,
        extra_args=("--queue-size", str(s.queue_size), *mgmt, *s.ours_args),
        timeout=READY_TIMEOUT,
        command=s.ours_cmd,
    )


def start_qsd_for(s: BackendSettings, socket: Path, log_path: Path) -> BackendProcess:
    """qemu-storage-daemon with the equivalent export: null-co for null, else the file, or the
    same remote disk through QEMU's own driver for it."""
    if s.remote:
        assert isinstance(s.image, str)
        return start_qsd(
            socket, None, log_path=log_path, num_queues=s.num_queues, timeout=READY_TIMEOUT,
            blockdev=remote.qsd_blockdev(s.image),
        )  # fmt: skip
    if s.null:
        return start_qsd(
            socket, None, log_path=log_path, num_queues=s.num_queues,
            null_size=s.capacity(), timeout=READY_TIMEOUT,
        )  # fmt: skip
    return start_qsd(
        socket, s.image, log_path=log_path, aio=s.aio, cache=s.cache,
        num_queues=s.num_queues, timeout=READY_TIMEOUT,
    )  # fmt: skip


def _one_line(e: BackendFailed) -> str:
    """The failure and the last line of the backend's log, on one line."""
    lines = [x for x in str(e).splitlines() if x.strip()]
    return lines[0] + (f": {lines[-1].strip()}" if len(lines) > 2 else "")


@dataclass
class Endpoint:
    """A vhost-user socket to drive, and the pid whose CPU use is the backend's."""

    socket: Path
    pid: int | None
    backend: BackendProcess | None = None
    mgmt: Path | None = None  # ours' management socket (BackendSettings.mgmt)


@contextmanager
def endpoint(spec: TargetSpec, s: BackendSettings, run_name: str) -> Iterator[Endpoint]:
    """The target's socket for one run, its backend started and stopped around it."""
    if spec.kind == "socket":
        assert spec.path is not None
        yield Endpoint(spec.path, None)
        return
    assert s.scratch is not None and s.log_dir is not None
    socket = s.scratch / f"{run_name}.sock"
    log_path = s.log_dir / f"{run_name}.log"
    start = start_ours if spec.kind == "ours" else start_qsd_for
    try:
        b = start(s, socket, log_path)
    except BackendFailed as e:
        raise BenchError(f"{spec.label}: {_one_line(e)}") from None
    try:
        mgmt = mgmt_socket(socket) if spec.kind == "ours" and s.mgmt else None
        yield Endpoint(socket, b.pid, b, mgmt)
    except BaseException:
        try:
            b.stop()
        except BackendFailed:
            pass
        raise
    try:
        rc = b.stop()
    except BackendFailed as e:
        raise BenchError(f"{spec.label}: {_one_line(e)}") from None
    if spec.kind == "ours" and rc != 0:
        tail = b.log_text().strip().splitlines()[-1:] or [""]
        raise BenchError(f"ours exited with status {rc} after the run: {tail[0]}")


# -- what the report header says of each target ------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


def describe(spec: TargetSpec, s: BackendSettings) -> str:
    """One line saying what ``spec`` is, as it is (a socket target: what answers there)."""
    line = _describe(spec, s)
    if spec.dirty_log:
        line += f" [{spec.label}: dirty logging on: SET_LOG_BASE, LOG_ALL, VHOST_VRING_F_LOG]"
    return line


def _describe(spec: TargetSpec, s: BackendSettings) -> str:
    if spec.kind == "socket":
        assert spec.path is not None
        return f"{spec.label}: {probe_socket(spec.path)}"
    if spec.kind == "ours":
        cmd = " ".join(s.ours_cmd or dataplane_command()) + " serve"
        if s.ours_cmd is None:
            cmd = f"dataplane {__version__} ({cmd})"
        if isinstance(s.image, str):
            where = f"{remote.describe_image(s.image)} ({_mib(s.capacity())})"
        elif s.image is None:  # a placeholder image that the null engine never touches
            where = f"null engine, a {_mib(s.capacity())} device"
        else:
            where = f"image {s.image} ({_mib(s.capacity())}), aio={s.aio}, cache={s.cache}"
        return f"ours: {cmd}; {where}, queue-size={s.queue_size}; {_ours_polling(s)}"
    if spec.kind == "qsd":
        if isinstance(s.image, str):
            return (
                f"qsd: qemu-storage-daemon, --blockdev {remote.qsd_blockdev(s.image)}; "
                f"{QSD_POLLING}"
            )
        if s.null:
            return (
                f"qsd: qemu-storage-daemon, null-co of {_mib(s.capacity())} (read-zeroes); "
                f"{QSD_POLLING}"
            )
        direct = "on" if s.cache == "none" else "off"
        return (
            f"qsd: qemu-storage-daemon, file {s.image} ({_mib(s.capacity())}), aio={s.aio}, "
            f"cache.direct={direct}; {QSD_POLLING}"
        )
    if spec.kind == "limit":
        return (
            "limit: the ideal device in this process: a thread that busy-polls the avail ring "
            "and completes each request at once, touching nothing else (the ring's own limit)"
        )
    if isinstance(s.image, str):
        engine = " ".join(remote.fio_engine(s.image))
        return f"fio: fio {engine}, its own client on {remote.describe_image(s.image)}"
    if s.null:
        return "fio: fio's null engine (its submission loop alone)"
    direct = 1 if s.cache == "none" else 0
    return f"fio: fio, ioengine=io_uring on {s.image} ({_mib(s.capacity())}), direct={direct}"


# qsd runs here as its manual starts it: no --object iothread, so the export runs in qsd's
# main loop, whose AioContext does not poll (QEMU polls in iothreads only, poll-max-ns).
QSD_POLLING = "no iothread: its main loop serves the export and does not poll"


def _ours_polling(s: BackendSettings) -> str:
    """What ours polls: --poll-us among --ours-arg, else serve's default for the image."""
    args = list(s.ours_args)
    given = None
    for i, a in enumerate(args):
        if a.startswith("--poll-us="):
            given = a.split("=", 1)[1]
        elif a == "--poll-us" and i + 1 < len(args):
            given = args[i + 1]
    if given is not None:
        return f"polls up to {given} µs (--poll-us)" if given != "0" else "does not poll"
    if s.remote:
        return "does not poll (a remote disk's default)"
    return f"polls up to {DEFAULT_POLL_US} µs before sleeping (the default --poll-us)"


def check_listening(path: Path, label: str) -> None:
    """UsageError unless a backend listens on ``path`` now (a socket: target runs no server)."""
    if not path.exists():
        raise UsageError(f"--target {label}: no such socket (start the backend first)")
    if not path.is_socket():
        raise UsageError(f"--target {label}: {path} is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(5.0)
        probe.connect(str(path))
    except OSError as e:
        raise UsageError(f"--target {label}: cannot connect: {e.strerror or e}") from None
    finally:
        probe.close()


def probe_socket(path: Path) -> str:
    """Who serves ``path`` and what device: one short connection, as the runs make."""
    try:
        with Frontend(path, timeout=5.0) as fe:
            pid = peer_pid(fe.sock)
            n = negotiate(fe)
    except (OSError, ProtocolError) as e:
        return f"a running backend (not reachable now: {e})"
    who = f"pid {pid}" if pid else "pid unknown"
    if pid:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            who += f", {' '.join(a.decode(errors='replace') for a in argv[:3] if a)}"
        except OSError:
            pass
    return f"a running backend ({who}); a {_mib(n.capacity * 512)} device, {n.max_queues} queue(s)"
