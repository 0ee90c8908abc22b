"""Device specs: ``--device KEY=VALUE,...``, ``--config FILE.toml`` and the management socket.

All three describe a device with the same keys and end in the same ``DeviceOptions``
(device.py); every check lives here, so a mistake reads the same wherever it was made:

=============  ==========================================================================
key            value
=============  ==========================================================================
socket         the vhost-user UNIX socket path, or ``fd:N`` / ``fd:NAME``: a listening
               socket this process inherited (fd N, or the systemd socket named NAME).
               Required, except under systemd socket activation, where a device
               without it takes the socket whose ``FileDescriptorName=`` is its name
socket-mode    the socket file's permission bits, octal (``0660``); path sockets only
socket-group   the socket file's group (name or number), e.g. libvirt's ``libvirt-qemu``
socket-owner   the socket file's owner (name or number; needs root)
image          the raw image file (required)
name           the device's name in logs, thread names and stats (default ``vblk<N>``)
aio            io_uring, native, threads or null
cache          none or writeback
num-queues     virtqueues offered (1 to 64)
queue-size     largest virtqueue size accepted (power of two, 2 to 32768)
iothreads      dataplane threads for this device (1 to num-queues); queue i runs on
               thread i % iothreads
cpus           CPUs to pin the threads to: thread n runs on the n-th CPU of the list
               (round-robin).  Ranges and ``:`` separators, so that the list survives
               the comma-separated ``--device`` string: ``cpus=0:2-3`` is CPUs 0, 2, 3.
               In TOML and JSON also a list of integers, or a string with commas.
read-only      on/off (also true/false, yes/no, 1/0; a bare ``read-only`` is on)
serial         GET_ID string, at most 20 bytes
datapath       native or python
poll-us        native only: adaptive polling window in microseconds (0 to 1000000; 0: off;
               default 64)
bounce-mib     bounce memory per dataplane thread, MiB (default 32): O_DIRECT requests whose
               guest buffers are misaligned go through it; one that does not fit waits
=============  ==========================================================================

Keys may also be spelt with ``_`` (``num_queues``).  A config file holds ``[[device]]``
tables and, optionally, a top-level ``mgmt = "PATH"`` (the management socket) and
``metrics = "ADDR:PORT"`` (``--metrics``).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dataplane.device.bounce import MIN_BLOCK
from dataplane.device.datapath.base import DATAPATHS
from dataplane.device.engines import ENGINES
from dataplane.device.image import CACHE_MODES
from dataplane.errors import UsageError
from dataplane.serve import activation
from dataplane.serve.activation import InheritedSocket
from dataplane.serve.blkdev import MAX_QUEUES, DeviceOptions, check_queue_size
from dataplane.serve.socket_access import (
    MAX_SOCKET_PATH,
    SocketAccess,
    parse_group,
    parse_mode,
    parse_user,
)

MAX_POLL_US = 1_000_000
MAX_BOUNCE_MIB = 1 << 16
MAX_SERIAL_BYTES = 20
NAME_RE = re.compile(r"[A-Za-z0-9_.+-]{1,32}")
_TRUE = ("on", "true", "yes", "1")
_FALSE = ("off", "false", "no", "0")


def _int(key: str, value: object) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{key}={value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    raise ValueError(f"{key}={value!r} is not an integer")


def _bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise ValueError(f"{key}={value!r} is not on or off")


def _str(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}={value!r} must be a non-empty string")
    return value


def _choice(choices: Iterable[str]) -> Callable[[str, object], str]:
    allowed = tuple(choices)

    def parse(key: str, value: object) -> str:
        if value not in allowed:
            raise ValueError(f"{key}={value!r} is not one of {', '.join(allowed)}")
        return str(value)

    return parse


def cpu_limit() -> int:
    """One past the highest CPU number this host can have (a CPU list names no more)."""
    return max(os.cpu_count() or 1, max(os.sched_getaffinity(0), default=0) + 1)


def parse_cpus(value: object, key: str = "cpus", *, limit: int | None = None) -> tuple[int, ...]:
    """``"0:2-3"``, ``"0,2-3"``, ``[0, 2, 3]`` or ``3`` -> (0, 2, 3), in order, each once.

    Every CPU must exist (below ``limit``, by default ``cpu_limit()``); ranges
    are checked before they are expanded, so that the work is linear in the
    CPUs that exist, whatever the spec says (``"0-100000000"`` is refused at once).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        items: list[object] = [value]
    elif isinstance(value, list):
        items = list(value)
    elif isinstance(value, str):
        items = [p.strip() for p in re.split(r"[:,]", value)]
    else:
        raise ValueError(f"{key}={value!r} is not a CPU list (e.g. cpus=0:2-3)")
    limit = cpu_limit() if limit is None else limit
    if len(items) > limit:
        raise ValueError(f"{key}={value!r} names more than the {limit} CPUs of this host")
    cpus: list[int] = []
    seen: set[int] = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            lo = hi = item
        elif isinstance(item, str) and (m := re.fullmatch(r"(\d+)(?:-(\d+))?", item)):
            lo = int(m[1])
            hi = int(m[2]) if m[2] is not None else lo
        else:
            raise ValueError(f"{key}={value!r} is not a CPU list (e.g. cpus=0:2-3)")
        if lo < 0 or hi < lo:
            raise ValueError(f"{key}={value!r}: range {lo}-{hi} is empty or negative")
        if hi >= limit:
            raise ValueError(
                f"{key}={value!r}: CPU {hi} does not exist (this host has CPUs 0-{limit - 1})"
            )
        for c in range(lo, hi + 1):
            if c not in seen:
                seen.add(c)
                cpus.append(c)
    if not cpus:
        raise ValueError(f"{key}={value!r} names no CPU")
    return tuple(cpus)


def format_cpus(cpus: Iterable[int]) -> str:
    """(0, 2, 3) -> "0:2-3" (the ``--device`` syntax)."""
    parts: list[str] = []
    run: list[int] = []
    for c in cpus:
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [c]
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ":".join(parts)


def _path(key: str, value: object) -> Path:
    return Path(_str(key, value))


def parse_socket(key: str, value: object) -> Path | InheritedSocket:
    """A socket path, or ``fd:N`` / ``fd:NAME`` (an inherited listening socket)."""
    text = _str(key, value)
    if text.startswith("fd:"):
        return activation.parse_fd_socket(text, key)
    return Path(text)


# key -> (DeviceOptions field, parser)
KEYS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "socket": ("socket", parse_socket),
    "socket-mode": ("socket_mode", parse_mode),
    "socket-owner": ("socket_owner", parse_user),
    "socket-group": ("socket_group", parse_group),
    "image": ("image", _path),
    "name": ("name", _str),
    "aio": ("aio", _choice(ENGINES)),
    "cache": ("cache", _choice(CACHE_MODES)),
    "num-queues": ("num_queues", _int),
    "queue-size": ("queue_size", _int),
    "iothreads": ("iothreads", _int),
    "cpus": ("cpus", lambda k, v: parse_cpus(v, k)),
    "read-only": ("read_only", _bool),
    "serial": ("serial", _str),
    "datapath": ("datapath", _choice(DATAPATHS)),
    "poll-us": ("poll_us", _int),
    "bounce-mib": ("bounce_mib", _int),
}
BOOL_KEYS = ("read-only",)


def _key(raw: str, where: str) -> str:
    key = raw.strip().replace("_", "-")
    if key not in KEYS:
        raise UsageError(f"{where}: unknown key {raw!r} (keys: {', '.join(KEYS)})")
    return key


def options_from_mapping(spec: Mapping[str, object], where: str) -> DeviceOptions:
    """A device from ``{key: value}`` (TOML table, JSON object); checked by ``check_options``."""
    if not isinstance(spec, Mapping):
        raise UsageError(f"{where}: a device is a table of KEY = VALUE, not {spec!r}")
    values: dict[str, object] = {}
    for raw, value in spec.items():
        key = _key(str(raw), where)
        fname, parse = KEYS[key]
        if fname in values:
            raise UsageError(f"{where}: {key} is given twice")
        try:
            values[fname] = parse(key, value)
        except ValueError as e:
            raise UsageError(f"{where}: {e}") from None
    if "image" not in values:
        raise UsageError(f"{where}: image= is required")
    if "socket" not in values and not activation.listen_fds():
        raise UsageError(f"{where}: socket= is required")
    opts = DeviceOptions(**values)  # type: ignore[arg-type]
    check_options(opts, where)
    return opts


def parse_device(text: str, where: str = "--device") -> DeviceOptions:
    """``socket=PATH,image=FILE[,key=value...]`` (``--device``) -> DeviceOptions."""
    spec: dict[str, object] = {}
    for token in text.split(","):
        if not token.strip():
            raise UsageError(f"{where}: empty item in {text!r}")
        key, eq, value = token.partition("=")
        if not eq:
            if key.strip().replace("_", "-") in BOOL_KEYS:
                value = "on"
            else:
                raise UsageError(
                    f"{where}: {token!r} is not KEY=VALUE (separate the CPUs of cpus= "
                    "with ':', e.g. cpus=0:2-3)"
                )
        k = _key(key, where)
        if k in spec:
            raise UsageError(f"{where}: {k} is given twice")
        spec[k] = value.strip()
    return options_from_mapping(spec, where)


def check_options(opts: DeviceOptions, where: str = "", *, flags: bool = False) -> None:
    """Every per-device check; ``flags``: name the single-device flags (``--num-queues 65``)."""

    def name(key: str, value: object) -> str:
        return f"--{key} {value}" if flags else f"{where}: {key}={value}"

    def fail(message: str) -> None:
        raise UsageError(message)

    if opts.num_queues < 1:
        fail(f"{name('num-queues', opts.num_queues)} must be positive")
    if opts.num_queues > MAX_QUEUES:
        fail(f"{name('num-queues', opts.num_queues)} is above the maximum of {MAX_QUEUES}")
    if not check_queue_size(opts.queue_size):
        fail(f"{name('queue-size', opts.queue_size)} must be a power of two from 2 to 32768")
    if opts.serial is not None and len(opts.serial.encode()) > MAX_SERIAL_BYTES:
        fail(f"{name('serial', repr(opts.serial))} is longer than the 20 bytes virtio-blk allows")
    if opts.poll_us is not None and not 0 <= opts.poll_us <= MAX_POLL_US:
        fail(f"{name('poll-us', opts.poll_us)} is not from 0 to {MAX_POLL_US}")
    # Every request the config space allows (seg_max segments of at least 4 KiB) must fit.
    least = -(-(opts.queue_size - 2) * MIN_BLOCK // (1 << 20))
    if not least <= opts.bounce_mib <= MAX_BOUNCE_MIB:
        fail(
            f"{name('bounce-mib', opts.bounce_mib)} is not from {least} to {MAX_BOUNCE_MIB}"
            f" (queue-size {opts.queue_size} needs at least {least} MiB)"
        )
    if opts.poll_us and opts.datapath != "native":
        fail("--poll-us needs --datapath native" if flags else f"{where}: poll-us needs "
             "datapath=native")  # fmt: skip
    if opts.iothreads < 1:
        fail(f"{name('iothreads', opts.iothreads)} must be positive")
    if opts.iothreads > opts.num_queues:
        fail(
            f"{name('iothreads', opts.iothreads)} is more than the {opts.num_queues} queue(s): "
            "a thread serves whole queues"
        )
    if opts.cpus:
        allowed = os.sched_getaffinity(0)
        for cpu in opts.cpus:
            if cpu not in allowed:
                fail(
                    f"{name('cpus', format_cpus(opts.cpus))}: CPU {cpu} is not in this "
                    f"process's CPU affinity ({format_cpus(sorted(allowed))})"
                )
    if opts.name and not NAME_RE.fullmatch(opts.name):
        fail(f"{name('name', repr(opts.name))} must be 1 to 32 of A-Z a-z 0-9 _ . + -")
    if isinstance(opts.socket, InheritedSocket) and socket_access(opts):
        fail(
            f"{where}: socket-mode, socket-owner and socket-group apply to a socket path, not "
            f"socket={opts.socket}: set them where that socket is made (SocketMode=, "
            "SocketUser=, SocketGroup= in a systemd .socket unit)"
        )
    if isinstance(opts.socket, Path) and len(os.fsencode(opts.socket)) > MAX_SOCKET_PATH:
        fail(
            f"{name('socket', opts.socket)}: the path is {len(os.fsencode(opts.socket))} bytes "
            f"and a UNIX socket path holds at most {MAX_SOCKET_PATH}: choose a shorter one"
        )


def socket_access(opts: DeviceOptions) -> SocketAccess:
    """What ``socket-mode``, ``socket-owner`` and ``socket-group`` ask for the socket file."""
    return SocketAccess(opts.socket_mode, opts.socket_owner, opts.socket_group)


def take_activated_sockets(devices: list[DeviceOptions]) -> list[DeviceOptions]:
    """Under systemd socket activation, give each device without ``socket=`` its named fd."""
    out = []
    for d in devices:
        if d.socket is None:
            inherited = activation.socket_named(d.name)
            if inherited is None:
                names = ", ".join(s.name for s in activation.listen_fds() if s.name) or "none"
                raise UsageError(
                    f"device {d.name!r} has no socket=, and no socket systemd passed is named "
                    f"{d.name!r} (FileDescriptorName= of the .socket unit; passed: {names})"
                )
            d = replace(d, socket=inherited)
        out.append(d)
    return out


def assign_names(devices: list[DeviceOptions], taken: Iterable[str] = ()) -> list[DeviceOptions]:
    """Give every unnamed device the first free ``vblk<N>``."""
    used = set(taken) | {d.name for d in devices if d.name}
    out = []
    n = 0
    for d in devices:
        if not d.name:
            while f"vblk{n}" in used:
                n += 1
            d = replace(d, name=f"vblk{n}")
            used.add(d.name)
        out.append(d)
    return out


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[::1]:9100``; ``:9100`` is every address; port 0: any free one)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not ADDR:PORT (e.g. 127.0.0.1:9100)")
    host = host.removeprefix("[").removesuffix("]")
    return host or "0.0.0.0", int(port)


def _same_file_key(path: Path) -> str:
    try:
        return str(path.resolve())
    except OSError:
        return os.path.abspath(path)


def _socket_key(socket: Path | InheritedSocket) -> str:
    return str(socket) if isinstance(socket, InheritedSocket) else os.path.abspath(socket)


def check_unique(devices: Iterable[DeviceOptions], existing: Iterable[DeviceOptions] = ()) -> None:
    """No two devices share a name, a socket or an image."""
    seen: dict[tuple[str, str], str] = {}
    for d in [*existing, *devices]:
        assert d.socket is not None
        for what, key in (
            ("name", d.name),
            ("socket", _socket_key(d.socket)),
            ("image", _same_file_key(d.image)),
        ):
            if not key:
                continue
            other = seen.get((what, key))
            if other is not None:
                raise UsageError(
                    f"device {d.name!r} has the same {what} as device {other!r}: {key}"
                )
            seen[(what, key)] = d.name


@dataclass(slots=True)
class ServeConfig:
    """Everything ``dataplane serve`` was asked to run."""

    devices: list[DeviceOptions]
    mgmt: Path | None = None
    metrics: tuple[str, int] | None = None  # --metrics ADDR:PORT


def load_config(path: Path) -> ServeConfig:
    """Read ``--config FILE.toml``: ``[[device]]`` tables and an optional ``mgmt``."""
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except OSError as e:
        raise UsageError(f"--config {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--config {path}: not valid TOML: {e}") from None
    for key in doc:
        if key not in ("device", "mgmt", "metrics"):
            raise UsageError(
                f"--config {path}: unknown top-level key {key!r} "
                "(use [[device]] tables, mgmt and metrics)"
            )
    tables = doc.get("device", [])
    if not isinstance(tables, list):
        raise UsageError(f"--config {path}: write devices as [[device]] tables")
    devices = [
        options_from_mapping(t, f"--config {path}: [[device]] #{i + 1}")
        for i, t in enumerate(tables)
    ]
    mgmt = doc.get("mgmt")
    if mgmt is not None and (not isinstance(mgmt, str) or not mgmt):
        raise UsageError(f"--config {path}: mgmt must be a socket path string")
    metrics = doc.get("metrics")
    if metrics is not None:
        try:
            metrics = parse_listen(metrics if isinstance(metrics, str) else repr(metrics))
        except ValueError as e:
            raise UsageError(f"--config {path}: metrics = {e}") from None
    return ServeConfig(devices, Path(mgmt) if mgmt else None, metrics)


def spec_of(opts: DeviceOptions) -> dict[str, object]:
    """The device as ``{key: value}`` with the keys above (``devices`` answers with it)."""
    out: dict[str, object] = {}
    for key, (fname, _) in KEYS.items():
        value = getattr(opts, fname)
        if isinstance(value, Path | InheritedSocket):
            value = str(value)
        elif fname == "socket_mode" and value is not None:
            value = f"{value:04o}"
        elif fname == "cpus":
            value = list(value)
        out[key] = value
    return out
