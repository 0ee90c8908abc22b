"""The ``dataplane`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from dataplane import __version__
from dataplane.bench import cli as bench_cli
from dataplane.device import (
    DEFAULT_QUEUE_SIZE,
    MAX_QUEUES,
    BlkDevice,
    DeviceOptions,
    check_queue_size,
)
from dataplane.engines import ENGINES
from dataplane.errors import UsageError
from dataplane.image import CACHE_MODES
from dataplane.iothread import DATAPATHS
from dataplane.server import DeviceServer, claim_socket_path

log = logging.getLogger("dataplane")

MAX_POLL_US = 1_000_000


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _positive(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _poll_us(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value <= MAX_POLL_US:
        raise argparse.ArgumentTypeError(f"{text!r} is not from 0 to {MAX_POLL_US}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dataplane", description="A userspace virtio-blk dataplane.")
    parser.add_argument("--version", action="version", version=f"dataplane {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser(
        "serve",
        help="serve a raw image as a vhost-user-blk device",
        description="Serve a raw image to QEMU (-device vhost-user-blk-pci) over a UNIX socket.",
    )
    serve.add_argument("--socket", required=True, type=Path, help="vhost-user UNIX socket path")
    serve.add_argument("--image", required=True, type=Path, help="raw image file")
    serve.add_argument(
        "--aio",
        choices=[n for n in ENGINES if n != "null"] + ["null"],
        default="io_uring",
        help="I/O engine (default io_uring; falls back to native if io_uring is unavailable)",
    )
    serve.add_argument(
        "--cache",
        choices=CACHE_MODES,
        default="none",
        help="none: O_DIRECT (default); writeback: page cache, FLUSH is fdatasync",
    )
    serve.add_argument("--num-queues", type=_positive, default=1, help="virtqueues (default 1)")
    serve.add_argument(
        "--queue-size",
        type=_positive,
        default=DEFAULT_QUEUE_SIZE,
        help=f"largest virtqueue size accepted (power of two, default {DEFAULT_QUEUE_SIZE})",
    )
    serve.add_argument(
        "--read-only", action="store_true", help="export read-only (VIRTIO_BLK_F_RO)"
    )
    serve.add_argument("--serial", help="device serial for GET_ID (default: the image file name)")
    serve.add_argument(
        "--datapath",
        choices=DATAPATHS,
        default="native",
        help="native: the ring path in C (default); python: the Python reference",
    )
    serve.add_argument(
        "--poll-us",
        type=_poll_us,
        default=0,
        metavar="N",
        help="poll the rings up to N microseconds before sleeping, adapting the window "
        "(native datapath only; default 0: off)",
    )
    bench_cli.add_parser(sub)
    return parser


def _check_serve(args: argparse.Namespace) -> DeviceOptions:
    if args.num_queues > MAX_QUEUES:
        raise UsageError(f"--num-queues {args.num_queues} is above the maximum of {MAX_QUEUES}")
    if not check_queue_size(args.queue_size):
        raise UsageError(f"--queue-size {args.queue_size} must be a power of two from 2 to 32768")
    if args.serial is not None and len(args.serial.encode()) > 20:
        raise UsageError(f"--serial {args.serial!r} is longer than the 20 bytes virtio-blk allows")
    if args.poll_us and args.datapath != "native":
        raise UsageError("--poll-us needs --datapath native")
    return DeviceOptions(
        image=args.image,
        aio=args.aio,
        cache=args.cache,
        num_queues=args.num_queues,
        queue_size=args.queue_size,
        read_only=args.read_only,
        serial=args.serial,
        datapath=args.datapath,
        poll_us=args.poll_us,
    )


async def _serve(opts: DeviceOptions, socket_path: Path) -> None:
    sock = claim_socket_path(socket_path)
    try:
        device = BlkDevice("vblk0", opts, log)
    except BaseException:
        sock.close()
        socket_path.unlink(missing_ok=True)
        raise
    server = DeviceServer(device, sock, socket_path, log)
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(server.serve_forever())
    stop_signal: list[int] = []

    def on_signal(signum: int) -> None:
        stop_signal.append(signum)
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    log.info(
        "listening on %s: %s, %d sectors, %d queue(s), aio=%s, cache=%s, datapath=%s%s",
        socket_path,
        opts.image,
        device.disk.sectors,
        opts.num_queues,
        device.engine_name,
        opts.cache,
        opts.datapath,
        ", read-only" if opts.read_only else "",
    )
    try:
        await task
    except asyncio.CancelledError:
        if not stop_signal:
            raise
    finally:
        server.close()
        await asyncio.to_thread(device.close)
    log.info("stopped on %s", signal.Signals(stop_signal[0]).name if stop_signal else "error")


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
            opts = _check_serve(args)
            _run(_serve(opts, args.socket))
        elif args.command == "bench":
            return bench_cli.main(args)
    except UsageError as e:
        print(f"dataplane: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
