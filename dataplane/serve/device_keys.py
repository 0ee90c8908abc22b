"""The device keys: what each one means, how its value is read, and the checks of a device.

``--device KEY=VALUE,...``, ``--config FILE.toml`` and the management socket's
``add-device`` all describe a device with these keys and end in the same
``DeviceOptions`` (device_options.py); config.py reads the three forms.  Every check lives
here, so a mistake reads the same wherever it was made:

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
image          what the disk is (required): a raw image file, or a remote disk:
               ``nbd://HOST[:PORT]/EXPORT``, ``nbd+unix:///EXPORT?socket=PATH`` (an NBD
               export) or ``rbd:POOL/IMAGE[@SNAP]`` (a Ceph RBD image; a snapshot is
               served read-only)
name           the device's name in logs, thread names and stats (default ``vblk<N>``)
aio            files only: io_uring, native, threads or null
cache          files only: none or writeback
num-queues     virtqueues offered (1 to 64)
queue-size     largest virtqueue size accepted (power of two, 2 to 32768)
iothreads      dataplane threads for this device (1 to num-queues); queue i runs on
               thread i % iothreads.  A remote disk opens one connection per thread: NBD
               needs a server that offers multi-conn for more than 1, RBD takes 1
cpus           CPUs to pin the threads to: thread n runs on the n-th CPU of the list
               (round-robin).  Ranges and ``:`` separators, so that the list survives
               the comma-separated ``--device`` string: ``cpus=0:2-3`` is CPUs 0, 2, 3.
               In TOML and JSON also a list of integers, or a string with commas.
read-only      on/off (also true/false, yes/no, 1/0; a bare ``read-only`` is on)
incoming       on/off (a bare ``incoming`` is on): a live migration's destination, named
               after QEMU's ``-incoming``.  An image file that another backend serves is
               opened, and written only once QEMU starts the rings (the source has given
               write ownership up by then: device/image.py).  A remote disk needs nothing:
               its server arbitrates
serial         GET_ID string, at most 20 bytes (default: the file, export or RBD image name)
datapath       native or python (remote disks: native only)
poll-us        native only: adaptive polling window in microseconds (0 to 1000000; 0: off;
               default 64, and 0 for a remote disk: see datapath/factory.py)
bounce-mib     files only: bounce memory per dataplane thread, MiB (default 32): O_DIRECT
               requests whose guest buffers are misaligned go through it; one that does
               not fit waits
reconnect-s    NBD only: how long requests wait for a dropped server to come back before
               they fail with IOERR, seconds (0 to 3600; default 10; 0: fail at the drop)
ceph-conf      RBD only: the ceph.conf file (default: Ceph's own search)
ceph-user      RBD only: the Ceph client id, e.g. ``admin`` (``client.admin`` also reads)
ceph-keyring   RBD only: the keyring file (default: what ceph.conf says)
iops-limit     and read-iops-limit, write-iops-limit, bps-limit, read-bps-limit,
               write-bps-limit, limit-burst-ms: I/O limits, see limit_keys.py
test-delay     TEST ONLY, files only: ``EVERY:US``, every EVERY-th completion of each
               thread's engine arrives US microseconds late (docs/test-delay.md)
=============  ==========================================================================

Keys may also be spelt with ``_`` (``num_queues``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from dataplane.device.settings import (
    DATAPATHS,
    ENGINES,
    MIN_BLOCK,
    Limits,
    TestDelay,
    check_queue_size,
    parse_test_delay,
)
from dataplane.device.settings import MAX_RECONNECT_S as MAX_SECONDS
from dataplane.errors import UsageError
from dataplane.serve import activation
from dataplane.serve.activation import InheritedSocket
from dataplane.serve.device_options import MAX_QUEUES, DeviceOptions
from dataplane.serve.limit_keys import LIMIT_FIELDS, parse_limit
from dataplane.serve.socket_access import (
    MAX_SOCKET_PATH,
    SocketAccess,
    parse_group,
    parse_mode,
    parse_user,
)
from dataplane.spec.choices import CACHE_MODES
from dataplane.spec.targets import check_target, image_kind

MAX_POLL_US = 1_000_000
MAX_BOUNCE_MIB = 1 << 16
MAX_SERIAL_BYTES = 20
NAME_RE = re.compile(r"[A-Za-z0-9_.+-]{1,32}")
_TRUE = ("on", "true", "yes", "1")
_FALSE = ("off", "false", "no", "0")


def parse_int(key: str, value: object) -> int:
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    if isinstance(value, int) and not isinstance(value, bool):
        return value
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


def parse_image(key: str, value: object) -> Path | str:
    """An image file's path, or a remote disk's target as a string (its form checked)."""
    text = _str(key, value)
    try:
        target = check_target(text)
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None
    if target is not None:
        return target
    if text.startswith("nbd:"):
        raise ValueError(
            f"{key}={text!r}: write an NBD export as a URI, nbd://HOST[:PORT]/EXPORT or "
            "nbd+unix:///EXPORT?socket=PATH"
        )
    return Path(text)


def parse_seconds(key: str, value: object) -> float:
    """A number of seconds from 0 to MAX_SECONDS (``10``, ``2.5``, ``"10s"``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{key}={value!r} is not a number of seconds")
    try:
        seconds = float(value.removesuffix("s") if isinstance(value, str) else value)
    except ValueError:
        raise ValueError(f"{key}={value!r} is not a number of seconds") from None
    if not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"{key}={value!r} is not from 0 to {MAX_SECONDS:g} seconds")
    return seconds


def _test_delay(key: str, value: Any) -> TestDelay:
    try:
        return parse_test_delay(str(value))
    except ValueError as e:
        raise UsageError(str(e)) from None


# key -> (DeviceOptions field, parser)
KEYS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "socket": ("socket", parse_socket),
    "socket-mode": ("socket_mode", parse_mode),
    "socket-owner": ("socket_owner", parse_user),
    "socket-group": ("socket_group", parse_group),
    "image": ("image", parse_image),
    "name": ("name", _str),
    "aio": ("aio", _choice(ENGINES)),
    "cache": ("cache", _choice(CACHE_MODES)),
    "num-queues": ("num_queues", parse_int),
    "queue-size": ("queue_size", parse_int),
    "iothreads": ("iothreads", parse_int),
    "cpus": ("cpus", lambda k, v: parse_cpus(v, k)),
    "read-only": ("read_only", _bool),
    "incoming": ("incoming", _bool),
    "serial": ("serial", _str),
    "datapath": ("datapath", _choice(DATAPATHS)),
    "poll-us": ("poll_us", parse_int),
    "bounce-mib": ("bounce_mib", parse_int),
    "reconnect-s": ("reconnect_s", parse_seconds),
    "ceph-conf": ("ceph_conf", _path),
    "ceph-user": ("ceph_user", _str),
    "ceph-keyring": ("ceph_keyring", _path),
    **{key: (fname, parse_limit) for key, fname in LIMIT_FIELDS.items()},
    "test-delay": ("test_delay", _test_delay),
}
BOOL_KEYS = ("read-only", "incoming")
# The keys that only some kinds of image take (image_kind); every other key applies to all.
KIND_KEYS: dict[str, tuple[str, ...]] = {
    "aio": ("file",),
    "cache": ("file",),
    "bounce-mib": ("file",),
    "test-delay": ("file",),
    "reconnect-s": ("nbd",),
    "ceph-conf": ("rbd",),
    "ceph-user": ("rbd",),
    "ceph-keyring": ("rbd",),
}
_KIND_TEXT = {"file": "an image file", "nbd": "an NBD export", "rbd": "an RBD image"}
_FIELD_KEYS = {fname: key for key, (fname, _) in KEYS.items()}


def key_name(raw: str, where: str) -> str:
    """``raw`` as a key of KEYS (``num_queues`` -> ``num-queues``), or UsageError."""
    key = raw.strip().replace("_", "-")
    if key not in KEYS:
        raise UsageError(f"{where}: unknown key {raw!r} (keys: {', '.join(KEYS)})")
    return key


def check_options(
    opts: DeviceOptions, where: str, *, flags: bool, given: Iterable[str], limits: Mapping[str, Any]
) -> None:
    """Every per-device check; ``flags``: name the single-device flags (``--num-queues 65``).

    ``given``: the fields the user set, each checked against the image's kind; ``limits``:
    the limit keys given (``{"iops-limit": N}``), checked and set as ``opts.limits``.
    """

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
    try:
        opts.limits = Limits.from_keys({**opts.limits.keys(), **limits})
    except ValueError as e:
        fail(f"--{e}".replace("=", " ", 1) if flags else f"{where}: {e}")
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
    kind = image_kind(opts.image)
    for fname in given:
        key = _FIELD_KEYS.get(fname, "")
        if kind not in KIND_KEYS.get(key, (kind,)):
            label = f"--{key}" if flags else f"{where}: {key}="
            fail(
                f"{label} is for {_KIND_TEXT[KIND_KEYS[key][0]]} only, and {opts.image} is "
                f"{_KIND_TEXT[kind]}"
            )
    if kind != "file" and opts.datapath != "native":
        fail(
            f"{name('datapath', opts.datapath)}: {_KIND_TEXT[kind]} is served by the native "
            "datapath only (its engine is C)"
        )


def socket_access(opts: DeviceOptions) -> SocketAccess:
    """What ``socket-mode``, ``socket-owner`` and ``socket-group`` ask for the socket file."""
    return SocketAccess(opts.socket_mode, opts.socket_owner, opts.socket_group)


def spec_of(opts: DeviceOptions) -> dict[str, object]:
    """The device as ``{key: value}`` with the keys above that apply to its image's kind
    (``devices`` answers with it)."""
    kind = image_kind(opts.image)
    out: dict[str, object] = {}
    for key, (fname, _) in KEYS.items():
        if kind not in KIND_KEYS.get(key, (kind,)):
            continue
        value = opts.limits.keys().get(key, getattr(opts, fname, None))
        if isinstance(value, Path | InheritedSocket):
            value = str(value)
        elif fname == "socket_mode" and value is not None:
            value = f"{value:04o}"
        elif fname == "cpus":
            value = list(value)
        elif isinstance(value, TestDelay):
            value = f"{value.every}:{value.delay_us}"  # as given, and JSON-ready
        out[key] = value
    return out
