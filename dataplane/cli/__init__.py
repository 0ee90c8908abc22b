"""The ``dataplane`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dataplane import __version__, argtypes
from dataplane.cli import device_ops, live_ops, mgmt_socket
from dataplane.cli import live_stats as stat_cli
from dataplane.cli.live_layers import read_stats
from dataplane.device import sandbox
from dataplane.device.datapath.factory import DATAPATHS, DEFAULT_POLL_US
from dataplane.device.engines import ENGINES
from dataplane.device.engines.remote import DEFAULT_RECONNECT_S
from dataplane.errors import UsageError
from dataplane.guest.bench import cli as bench_cli
from dataplane.serve import process
from dataplane.serve.config import (
    ServeConfig,
    assign_names,
    check_unique,
    load_config,
    options_of,
    parse_device,
    parse_listen,
    take_activated_sockets,
)
from dataplane.serve.device_keys import (
    KEYS,
    MAX_POLL_US,
    parse_cpus,
    parse_image,
    parse_seconds,
    parse_socket,
)
from dataplane.serve.device_options import DEFAULT_BOUNCE_MIB, DEFAULT_QUEUE_SIZE, DeviceOptions
from dataplane.serve.socket_access import parse_group, parse_mode, parse_user
from dataplane.spec.choices import CACHE_MODES

log = logging.getLogger("dataplane")


class ArgumentError(UsageError):
    """A usage error found by the parser of ``prog`` (``dataplane serve``, ...)."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ArgumentError(self.prog, f"{message} (see '{self.prog} --help')")


def _record_path(text: str) -> Path:
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: directory {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory")
    return path


def _converter(parse, key: str):
    """A config.py value parser (``parse(key, text)``) as an argparse ``type=``."""

    def convert(text: str):
        try:
            return parse(key, text)
        except ValueError as e:  # argparse names the flag already
            message = str(e).removeprefix(f"{key}=").removeprefix(f"{key}: ")
            raise argparse.ArgumentTypeError(message) from None

    return convert


def _cpus(text: str) -> tuple[int, ...]:
    try:
        return parse_cpus(text, "--cpus")
    except ValueError as e:  # argparse names the flag already
        message = str(e).removeprefix("--cpus=").replace("e.g. cpus=0:2-3", "e.g. --cpus 0:2-3")
        raise argparse.ArgumentTypeError(message) from None


_DEFAULT_MGMT = Path("\0default")  # serve --mgmt without PATH: mgmt_socket.serve_path()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dataplane", description="A userspace virtio-blk dataplane.")
    parser.add_argument("--version", action="version", version=f"dataplane {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser(
        "serve",
        help="serve raw images as vhost-user-blk devices",
        description="Serve raw images to QEMU (-device vhost-user-blk-pci) over UNIX sockets: "
        "one device with --socket/--image and the flags below, and any number more with "
        "--device or --config.",
    )
    for flag, parse, metavar, text in (
        ("--socket", parse_socket, "PATH|fd:N",
         "vhost-user UNIX socket path, or fd:N, a listening socket inherited as fd N"),
        ("--socket-mode", parse_mode, "MODE",
         "the socket file's permission bits, octal (e.g. 0660)"),
        ("--socket-group", parse_group, "GROUP",
         "the socket file's group (e.g. libvirt-qemu, for libvirt's QEMU)"),
        ("--socket-owner", parse_user, "USER",
         "the socket file's owner (needs root; e.g. libvirt-qemu)"),
    ):  # fmt: skip
        serve.add_argument(flag, type=_converter(parse, flag), metavar=metavar, help=text)
    serve.add_argument(
        "--image",
        type=_converter(parse_image, "--image"),
        metavar="FILE|URI",
        help="raw image file, or a remote disk: nbd://HOST[:PORT]/EXPORT, "
        "nbd+unix:///EXPORT?socket=PATH or rbd:POOL/IMAGE[@SNAP]",
    )
    serve.add_argument(
        "--aio",
        choices=[n for n in ENGINES if n != "null"] + ["null"],
        help="I/O engine (default io_uring; falls back to native if io_uring is unavailable)",
    )
    serve.add_argument(
        "--cache",
        choices=CACHE_MODES,
        help="none: O_DIRECT (default); writeback: page cache, FLUSH is fdatasync",
    )
    serve.add_argument(
        "--num-queues", type=argtypes.positive, metavar="N", help="virtqueues (default 1)"
    )
    serve.add_argument(
        "--queue-size",
        type=argtypes.positive,
        metavar="N",
        help=f"largest virtqueue size accepted (power of two, default {DEFAULT_QUEUE_SIZE})",
    )
    serve.add_argument(
        "--read-only", action="store_true", default=None, help="export read-only (VIRTIO_BLK_F_RO)"
    )
    serve.add_argument(
        "--incoming",
        action="store_true",
        default=None,
        help="a live migration's destination (QEMU -incoming): open an image another backend "
        "serves, and write it only once QEMU starts the rings",
    )
    serve.add_argument(
        "--serial", metavar="S", help="device serial for GET_ID (default: the image file name)"
    )
    serve.add_argument(
        "--datapath",
        choices=DATAPATHS,
        help="native: the ring path in C (default); python: the Python reference",
    )
    serve.add_argument(
        "--poll-us",
        type=argtypes.integer(0, MAX_POLL_US),
        metavar="N",
        help="poll the rings up to N microseconds before sleeping, adapting the window "
        f"(native datapath only; default {DEFAULT_POLL_US}; 0: off)",
    )
    serve.add_argument(
        "--bounce-mib",
        type=argtypes.positive,
        metavar="N",
        help=f"bounce memory per dataplane thread for misaligned O_DIRECT requests, MiB "
        f"(default {DEFAULT_BOUNCE_MIB})",
    )
    serve.add_argument(
        "--iothreads",
        type=argtypes.positive,
        metavar="K",
        help="dataplane threads; queue i runs on thread i %% K (default 1, at most --num-queues)",
    )
    serve.add_argument(
        "--cpus",
        type=_cpus,
        metavar="LIST",
        help="pin thread n to the n-th CPU of LIST (round-robin), e.g. 0:2-3 or 0-1",
    )
    serve.add_argument(
        "--name", metavar="NAME", help="device name in logs, thread names and stats (vblk0)"
    )
    serve.add_argument(
        "--reconnect-s",
        type=_converter(parse_seconds, "--reconnect-s"),
        metavar="S",
        help="NBD: how long requests wait for a dropped server before they fail (default 10)",
    )
    serve.add_argument("--ceph-conf", type=Path, metavar="FILE", help="RBD: the ceph.conf")
    serve.add_argument("--ceph-user", metavar="ID", help="RBD: the Ceph client id (admin)")
    serve.add_argument("--ceph-keyring", type=Path, metavar="FILE", help="RBD: the keyring")
    serve.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="SPEC",
        help="another device: socket=PATH|fd:N,image=FILE|URI[,aio=..,cache=..,num-queues=N,"
        "queue-size=N,iothreads=K,cpus=LIST,read-only=on,incoming=on,serial=S,datapath=..,poll-us=N,"
        "bounce-mib=N,name=NAME,socket-mode=0660,socket-group=G,socket-owner=U,"
        "reconnect-s=S,ceph-conf=FILE,ceph-user=ID,ceph-keyring=FILE,iops-limit=N,"
        "read-/write-iops-limit=N,bps-limit=SIZE,read-/write-bps-limit=SIZE,limit-burst-ms=MS]; "
        "repeatable",
    )
    serve.add_argument(
        "--config", type=Path, metavar="FILE", help="devices from a TOML file ([[device]] tables)"
    )
    serve.add_argument(
        "--mgmt",
        type=Path,
        nargs="?",
        const=_DEFAULT_MGMT,
        metavar="PATH",
        help="management socket (JSON lines: dataplane devices, stat, add-device...); without "
        "PATH: $DATAPLANE_MGMT, else /run/dataplane/mgmt.sock (root) or "
        "$XDG_RUNTIME_DIR/dataplane/mgmt.sock",
    )
    serve.add_argument(
        "--metrics",
        type=_converter(lambda _, text: parse_listen(text), "--metrics"),
        metavar="ADDR:PORT",
        help="serve Prometheus metrics over HTTP on ADDR:PORT/metrics (:PORT: every address)",
    )
    serve.add_argument(
        "--user",
        metavar="USER[:GROUP]",
        help="switch to USER (and GROUP, else USER's) once every socket is bound and every "
        "image is open; later add-device opens only what USER may",
    )
    serve.add_argument(
        "--sandbox",
        choices=sandbox.MODES,
        help="seccomp allow-lists per thread: on (a call outside them kills the process; "
        "the default, unless $DATAPLANE_SANDBOX says otherwise), log (the kernel logs it), off",
    )
    serve.add_argument(
        "--record",
        type=_record_path,
        metavar="FILE",
        help="write every request to FILE in the trace format (for dataplane bench --replay)",
    )
    serve.add_argument(
        "--trace-requests",
        type=argtypes.non_negative,
        metavar="N",
        help="narrate the first N requests step by step in the log (default 0: none)",
    )
    bench_cli.add_parser(sub)
    live_ops.add_limit_flags(serve)
    stat_cli.add_parser(sub)
    device_ops.add_parsers(sub)
    live_ops.add_parsers(sub)
    return parser


# The single-device flags: their DeviceOptions field and default.
_SINGLE_FLAGS = {
    "aio": "io_uring",
    "cache": "none",
    "num_queues": 1,
    "queue_size": DEFAULT_QUEUE_SIZE,
    "read_only": False,
    "incoming": False,
    "serial": None,
    "datapath": "native",
    "poll_us": None,
    "iothreads": 1,
    "cpus": (),
    "name": "",
    "record": None,
    "trace_requests": 0,
    "bounce_mib": DEFAULT_BOUNCE_MIB,
    "socket_mode": None,
    "socket_group": None,
    "socket_owner": None,
    "reconnect_s": DEFAULT_RECONNECT_S,
    "ceph_conf": None,
    "ceph_user": None,
    "ceph_keyring": None,
    **live_ops.LIMIT_DEFAULTS,
}


def _check_serve(args: argparse.Namespace) -> ServeConfig:
    """Every device the arguments describe, checked, named and unique; and the mgmt socket."""
    devices: list[DeviceOptions] = []
    given = [k for k in _SINGLE_FLAGS if getattr(args, k) is not None]
    if args.socket is not None or args.image is not None:
        if args.socket is None or args.image is None:
            missing = "--image" if args.image is None else "--socket"
            raise UsageError(f"{missing} is required with --socket/--image (one device)")
        values = {k: getattr(args, k) if k in given else d for k, d in _SINGLE_FLAGS.items()}
        values.update(image=args.image, socket=args.socket)
        devices.append(options_of(values, flags=True, given=given))
    elif given:
        key = given[0].replace("_", "-")
        if key not in KEYS:  # --record, --trace-requests: no key of --device
            raise UsageError(
                f"--{key} applies to the --socket/--image device only (--device and --config "
                f"have no {key} key): give --socket and --image, or drop --{key}"
            )
        raise UsageError(
            f"--{key} describes the --socket/--image device: give --socket and --image, or "
            f"write it as {key}=... in --device (or {key} = ... in the --config file)"
        )
    mgmt, metrics, user, mode = args.mgmt, args.metrics, args.user, args.sandbox
    if mgmt == _DEFAULT_MGMT:
        mgmt = mgmt_socket.serve_path()
    if args.config is not None:
        cfg = load_config(args.config)
        devices.extend(cfg.devices)
        mgmt = mgmt if mgmt is not None else cfg.mgmt
        metrics = metrics if metrics is not None else cfg.metrics
        user = user if user is not None else cfg.user
        mode = mode if mode is not None else cfg.sandbox
    if user is not None:
        sandbox.check_user(user)  # a usage error before anything starts
    for i, spec in enumerate(args.device):
        devices.append(parse_device(spec, f"--device #{i + 1}"))
    if not devices and mgmt is None:
        raise UsageError(
            "the following arguments are required: --socket and --image "
            "(or --device, --config, or --mgmt to add devices later)"
        )
    devices = take_activated_sockets(assign_names(devices))
    check_unique(devices)
    if mgmt is not None and any(
        os.path.abspath(mgmt) == os.path.abspath(d.socket)
        for d in devices
        if isinstance(d.socket, Path)
    ):
        raise UsageError(f"--mgmt {mgmt} is also a device socket: choose another path")
    return ServeConfig(devices, mgmt, metrics, user, mode or sandbox.default_mode())


def _run(coro) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(coro)
        return
    uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="dataplane: %(levelname)s: %(message)s", stream=sys.stderr
    )
    try:
        args = build_parser().parse_args(argv)
        if args.command == "serve":
            cfg = _check_serve(args)
            sandbox.no_new_privs()  # before any thread: every later one inherits it
            _run(process.serve(cfg, log))
        elif args.command == "bench":
            return bench_cli.main(args, server_stats=read_stats)
        elif args.command == "stat":
            return stat_cli.main(args)
        elif args.command in live_ops.COMMANDS:
            return live_ops.main(args)
        elif args.command in device_ops.COMMANDS:
            return device_ops.main(args)
    except UsageError as e:
        print(f"{getattr(e, 'prog', 'dataplane')}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
