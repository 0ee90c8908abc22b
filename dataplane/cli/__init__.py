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
from dataplane.cli import device_ops, key_flags, live_ops, mgmt_socket
from dataplane.cli import live_stats as stat_cli
from dataplane.cli.live_layers import read_stats
from dataplane.device import sandbox
from dataplane.errors import UsageError
from dataplane.guest.bench import cli as bench_cli
from dataplane.serve import process
from dataplane.serve.config import (
    ServeConfig,
    load_config,
    options_of,
    parse_device,
    parse_listen,
    take_activated_sockets,
)
from dataplane.serve.device_options import DeviceOptions, assign_names, check_unique

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


def _listen(text: str) -> tuple[str, int]:
    try:
        return parse_listen(text)
    except ValueError as e:  # argparse names the flag already
        raise argparse.ArgumentTypeError(str(e)) from None


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
    key_flags.add_key_flags(serve)
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
        type=_listen,
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
    stat_cli.add_parser(sub)
    device_ops.add_parsers(sub)
    live_ops.add_parsers(sub)
    return parser


def _check_serve(args: argparse.Namespace) -> ServeConfig:
    """Every device the arguments describe, checked, named and unique; and the mgmt socket."""
    devices: list[DeviceOptions] = []
    given = key_flags.given_fields(args)
    if args.socket is not None or args.image is not None:
        if args.socket is None or args.image is None:
            missing = "--image" if args.image is None else "--socket"
            raise UsageError(f"{missing} is required with --socket/--image (one device)")
        values = {k: getattr(args, k) for k in given}
        devices.append(options_of(values, flags=True, given=given))
    elif given:
        key = given[0].replace("_", "-")
        if given[0] in key_flags.SINGLE_ONLY:  # --record, --trace-requests: no key of --device
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
