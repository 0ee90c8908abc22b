"""The device keys: one table, from which every form of a device is made.

Each key is written once, in KEYS: its name, how its value is read (key_values.py),
the value as help shows it (``SIZE`` takes a suffix: ``10M``), its default, one line
of help, the kinds of image it applies to (file, nbd, rbd), whether ``set-limits``
changes it live, and whether it needs the C datapath (``--datapath native``; the
Python datapath is a teaching reference and refuses those keys).  Made from it:

- ``dataplane serve``'s flags, ``--NAME VALUE`` (cli/key_flags.py), and the
  ``--device KEY=VALUE,...`` help (``device_help``);
- the keys of a ``--config`` file's ``[[device]]`` tables and of the management socket's
  ``add-device`` (config.py reads both, and ``--device``, into one ``DeviceOptions``);
- the keys of a device in the ``devices`` answer (``spec_of``);
- the README's table of device keys (``markdown_table``; ``scripts/readme-keys.py``
  writes it, tests/test_readme.py checks it).

Keys may also be spelt with ``_`` (``num_queues``).  A key marked test-only exists only
with the test-hooks switch on (dataplane/test_hooks.py); without it, it is unknown.
The checks of a whole device are in device_checks.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

from dataplane import test_hooks
from dataplane.device.settings import BURST_KEY, DATAPATHS, Limits
from dataplane.errors import UsageError
from dataplane.serve.activation import InheritedSocket
from dataplane.serve.device_options import KIND_TEXT, DeviceOptions
from dataplane.serve.key_values import (
    Parser,
    choice,
    parse_bool,
    parse_cpus,
    parse_image,
    parse_int,
    parse_path,
    parse_rate,
    parse_seconds,
    parse_socket,
    parse_str,
    parse_test_delay,
)
from dataplane.serve.socket_access import parse_group, parse_mode, parse_user
from dataplane.spec.choices import CACHE_MODES, DEFAULT_POLL_US, ENGINE_NAMES
from dataplane.spec.targets import image_kind

ALL_KINDS = ("file", "nbd", "rbd")


@dataclass(frozen=True, slots=True)
class Key:
    """One device key."""

    name: str  # as --device spells it: num-queues
    parse: Parser  # (key, value) -> value; ValueError starts "key=value"
    value: str  # the value as help shows it: N, SIZE (a suffix: 10M), PATH; "" for on/off
    help: str  # one line
    default: str | None = None  # as help shows it; None: DeviceOptions' (or Limits') default
    kinds: tuple[str, ...] = ALL_KINDS  # the kinds of image it applies to
    live: bool = False  # set-limits changes it on a serving device
    c_only: bool = False  # needs --datapath native
    test_only: bool = False  # exists only with DATAPLANE_TEST_HOOKS=1 (no flag)
    choices: tuple[str, ...] = ()
    show: Callable[[Any], object] | None = None  # value -> JSON (devices); None: as is

    @property
    def field(self) -> str:
        """Where the parsed value goes: the DeviceOptions field, or a limit's name."""
        return self.name.replace("-", "_")

    @property
    def is_bool(self) -> bool:
        return self.parse is parse_bool

    @property
    def default_text(self) -> str:
        if self.default is not None:
            return self.default
        if self.live:
            value: object = Limits().keys()[self.name]
        else:
            f = next(f for f in fields(DeviceOptions) if f.name == self.field)
            value = f.default if f.default is not MISSING else "-"
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float):
            return f"{value:g}"
        return "-" if value in (None, (), "") else str(value)

    @property
    def datapaths(self) -> str:
        return "native" if self.c_only else "native, python"


def _limit(name: str, value: str, text: str, default: str | None = None) -> Key:
    parse = parse_rate if value == "SIZE" else parse_int
    return Key(name, parse, value, text, default, live=True, c_only=True)


KEYS: tuple[Key, ...] = (
    Key("socket", parse_socket, "PATH|fd:N",
        "the vhost-user UNIX socket path, or fd:N / fd:NAME: a listening socket inherited as "
        "fd N, or the one systemd passed as NAME",
        "required (under socket activation: the socket named after the device)"),
    Key("image", parse_image, "FILE|URI",
        "a raw image file, or a remote disk: nbd://HOST[:PORT]/EXPORT, "
        "nbd+unix:///EXPORT?socket=PATH (NBD) or rbd:POOL/IMAGE[@SNAP] (Ceph RBD)",
        "required"),
    Key("socket-mode", parse_mode, "MODE", "the socket file's permission bits, octal "
        "(path sockets only)", "0600", show=lambda v: f"{v:04o}"),
    Key("socket-group", parse_group, "GROUP",
        "the socket file's group, by name or number (libvirt's QEMU: libvirt-qemu)",
        "the process's"),
    Key("socket-owner", parse_user, "USER",
        "the socket file's owner, by name or number (needs root)", "the process's"),
    Key("name", parse_str, "NAME", "the device's name in logs, thread names and stats",
        "vblk0, vblk1, ..."),
    Key("aio", choice(ENGINE_NAMES), "|".join(ENGINE_NAMES),
        "the I/O engine: io_uring (falls back to native where unavailable), native (Linux "
        "AIO), threads, null (no I/O)", kinds=("file",), choices=ENGINE_NAMES),
    Key("cache", choice(CACHE_MODES), "|".join(CACHE_MODES),
        "none: O_DIRECT; writeback: the page cache (FLUSH is fdatasync in both)",
        kinds=("file",), choices=CACHE_MODES),
    Key("num-queues", parse_int, "N", "virtqueues offered (1 to 64)"),
    Key("queue-size", parse_int, "N",
        "the largest virtqueue size accepted (a power of two, 2 to 32768)"),
    Key("iothreads", parse_int, "K",
        "dataplane threads; queue i runs on thread i % K (at most num-queues)"),
    Key("cpus", lambda k, v: parse_cpus(v, k), "LIST",
        "pin thread n to the n-th CPU of LIST, round-robin (0:2-3 is CPUs 0, 2 and 3)",
        "not pinned", show=list),
    Key("read-only", parse_bool, "", "offer VIRTIO_BLK_F_RO: writes, discards and "
        "write-zeroes fail"),
    Key("incoming", parse_bool, "", "a live migration's destination (QEMU's -incoming): "
        "the image is written only once QEMU starts the rings"),
    Key("serial", parse_str, "S", "the GET_ID string, at most 20 bytes",
        "the image's file, export or RBD image name"),
    Key("datapath", choice(DATAPATHS), "|".join(DATAPATHS),
        "native: the ring path in C; python: the Python teaching reference, which takes "
        "no native-only key", choices=DATAPATHS),
    Key("poll-us", parse_int, "N", "poll the rings up to N µs before sleeping, the window "
        "adapting (0 to 1000000; 0: off)", f"{DEFAULT_POLL_US}; a remote disk: 0",
        c_only=True),
    Key("bounce-mib", parse_int, "N", "bounce memory per dataplane thread for misaligned "
        "O_DIRECT requests, MiB", kinds=("file",), c_only=True),
    Key("reconnect-s", parse_seconds, "S", "how long requests wait for a dropped NBD server "
        "to come back before they fail (0 to 3600; 0: fail at the drop)", kinds=("nbd",)),
    Key("ceph-conf", parse_path, "FILE", "the ceph.conf", "Ceph's own search",
        kinds=("rbd",)),
    Key("ceph-user", parse_str, "ID", "the Ceph client id (admin; client.admin also reads)",
        "Ceph's", kinds=("rbd",)),
    Key("ceph-keyring", parse_path, "FILE", "the keyring file", "what ceph.conf says",
        kinds=("rbd",)),
    _limit("iops-limit", "N", "I/O limit: requests per second, reads and writes (0: none)"),
    _limit("read-iops-limit", "N", "I/O limit: read requests per second"),
    _limit("write-iops-limit", "N",
           "I/O limit: write requests per second (discard and write-zeroes count)"),
    _limit("bps-limit", "SIZE", "I/O limit: bytes per second, read and written"),
    _limit("read-bps-limit", "SIZE", "I/O limit: bytes read per second"),
    _limit("write-bps-limit", "SIZE", "I/O limit: bytes written per second"),
    _limit(BURST_KEY, "MS", "the limits' burst: an idle device lets MS ms' worth of each "
           "rate through at once (0 to 60000)"),
    Key("test-delay", parse_test_delay, "EVERY:US", "TEST ONLY: every EVERY-th completion of "
        "each thread's engine arrives US µs late (docs/test-delay.md)", kinds=("file",),
        c_only=True, test_only=True, show=lambda v: f"{v.every}:{v.delay_us}"),
)  # fmt: skip

LIMIT_KEYS = tuple(k.name for k in KEYS if k.live)
BYTE_KEYS = tuple(k.name for k in KEYS if k.live and k.value == "SIZE")


def keys() -> Iterator[Key]:
    """The keys of this process: the test-only ones only with the test-hooks switch on."""
    hooks = test_hooks.enabled()
    return (k for k in KEYS if hooks or not k.test_only)


def by_name() -> dict[str, Key]:
    return {k.name: k for k in keys()}


def by_field() -> dict[str, Key]:
    return {k.field: k for k in keys()}


def check_given(opts: DeviceOptions, given: Iterable[str], where: str, *, flags: bool) -> None:
    """The keys a user set (``given``: their fields) against the image's kind and the
    datapath: a key for another kind, or a native-only key on the python datapath, is a
    UsageError; ``flags``: name the serve flags (``--iops-limit``), else ``where: key=``."""
    kind = opts.kind
    table = by_field()
    for key in (table[f] for f in given if f in table):
        label = f"--{key.name}" if flags else f"{where}: {key.name}="
        if kind not in key.kinds:
            raise UsageError(
                f"{label} is for {KIND_TEXT[key.kinds[0]]} only, and {opts.image} is "
                f"{KIND_TEXT[kind]}"
            )
        if key.c_only and opts.datapath != "native":
            how = "--datapath native" if flags else "datapath=native"
            raise UsageError(
                f"{label} needs the C datapath ({how}); the {opts.datapath} datapath is a "
                "teaching reference without it"
            )


def key_name(raw: str, where: str) -> Key:
    """``raw`` as a key (``num_queues`` -> num-queues), or UsageError (one line)."""
    table = by_name()
    key = table.get(raw.strip().replace("_", "-"))
    if key is None:
        raise UsageError(f"{where}: unknown key {raw!r} (keys: {', '.join(table)})")
    return key


def spec_of(opts: DeviceOptions) -> dict[str, object]:
    """The device as ``{key: value}``, JSON-ready, with the keys that apply to its image's
    kind (``devices`` answers with it); None where a key was left out without a default."""
    kind = image_kind(opts.image)
    limits = opts.limits.keys()
    out: dict[str, object] = {}
    for key in keys():
        if kind not in key.kinds:
            continue
        value = limits[key.name] if key.live else getattr(opts, key.field)
        if value is not None and key.show is not None:
            value = key.show(value)
        elif isinstance(value, Path | InheritedSocket):
            value = str(value)
        out[key.name] = value
    return out


def device_help() -> str:
    """The ``--device`` help: every key with its value."""
    items = [f"{k.name}={k.value or 'on'}" for k in keys()]
    return f"{','.join(items[:2])}[,{','.join(items[2:])}]"  # socket and image: required


def _kinds_text(kinds: Iterable[str]) -> str:
    kinds = tuple(kinds)
    return "all" if kinds == ALL_KINDS else ", ".join(kinds)


def markdown_table() -> str:
    """The README's table of the device keys (a normal install's: no test-only key)."""
    rows = [
        "| key | value | default | image | live | datapath | what |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in KEYS:
        if k.test_only:
            continue
        value = f"`{k.value}`".replace("|", "\\|") if k.value else "on/off"
        cells = [f"`{k.name}`", value, k.default_text.replace("|", "\\|"),
                 _kinds_text(k.kinds), "yes" if k.live else "", k.datapaths, k.help]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


__all__ = [
    "BYTE_KEYS",
    "KEYS",
    "LIMIT_KEYS",
    "Key",
    "by_field",
    "by_name",
    "check_given",
    "device_help",
    "key_name",
    "keys",
    "markdown_table",
    "spec_of",
]
