"""``dataplane set-limits`` and ``dataplane resize``: change a device of a running serve.

Both speak to the management socket of ``dataplane serve --mgmt`` (serve/mgmt_live.py)
and print one line: the device as it now is.  What the server refuses (no such
device, a bad key or size) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dataplane import argtypes
from dataplane.cli.mgmt_socket import connect
from dataplane.device.limiter import Limits
from dataplane.errors import UsageError
from dataplane.serve.limit_keys import (
    LIMIT_FIELDS,
    LIMIT_KEYS,
    LIMIT_METAVARS,
    LIMIT_TEXT,
    parse_limit,
)

__all__ = ["LIMIT_DEFAULTS", "add_limit_flags", "add_parsers", "main"]

COMMANDS = ("set-limits", "resize")
# The serve flags' dests and defaults (cli/__init__.py _SINGLE_FLAGS).
LIMIT_DEFAULTS: dict[str, object] = {LIMIT_FIELDS[k]: v for k, v in Limits().keys().items()}


def add_limit_flags(serve: argparse.ArgumentParser) -> None:
    """``--iops-limit N`` ... ``--limit-burst-ms MS``: the keys of limit_keys.py as flags."""
    for key in LIMIT_KEYS:
        serve.add_argument(
            f"--{key}", type=_limit(key), metavar=LIMIT_METAVARS[key], help=LIMIT_TEXT[key]
        )


def _limit(key: str):
    """``parse_limit`` as an argparse ``type=``: ``--bps-limit 10M``."""

    def parse(text: str) -> int:
        try:
            value = parse_limit(key, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix(f"{key}=")) from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
        return value

    return parse


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "set-limits",
        help="change the I/O limits of a device of a running 'dataplane serve --mgmt'",
        description="Change a device's I/O limits live: KEY=VALUE for the keys given "
        f"({', '.join(LIMIT_KEYS)}; 0: no limit); the others stay as they are.",
    )
    p.add_argument("socket", type=Path, metavar="SOCKET", help="the --mgmt socket of serve")
    p.add_argument("name", metavar="NAME", help="the device")
    p.add_argument("limits", nargs="+", metavar="KEY=VALUE", help="e.g. iops-limit=5000")
    r = sub.add_parser(
        "resize",
        help="tell a running guest that its disk grew (its image file, or to SIZE)",
        description="Without SIZE, re-read the size of the device's image file (after it "
        "was grown); with SIZE, grow the file to SIZE bytes.  Shrinking is refused.  The "
        "guest is told through the vhost-user backend channel (a config-change interrupt).",
    )
    r.add_argument("socket", type=Path, metavar="SOCKET", help="the --mgmt socket of serve")
    r.add_argument("name", metavar="NAME", help="the device")
    r.add_argument(
        "size", nargs="?", type=argtypes.size(1), metavar="SIZE",
        help="bytes, or with a suffix: 3G, 2GiB, 1500M (as truncate -s reads them)",
    )  # fmt: skip


def _limits(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"{pair!r} is not KEY=VALUE (e.g. iops-limit=5000)")
        out[key] = value
    return out


def _request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    if args.command == "set-limits":
        return "set-limits", {"name": args.name, "limits": _limits(args.limits)}
    fields: dict[str, Any] = {"name": args.name}
    if args.size is not None:
        fields["size"] = args.size
    return "resize", fields


def describe(cmd: str, device: dict[str, Any]) -> str:
    """The one line printed for the device as the server answered it."""
    if cmd == "set-limits":
        keys = " ".join(f"{k}={device[k]}" for k in LIMIT_KEYS)
        return f"{device['name']}: {keys}"
    told = device["told"]
    told = "the frontend was told" if told is True else f"the frontend was not told: {told}"
    return f"{device['name']}: {device['size']} bytes; {told}"


def main(args: argparse.Namespace) -> int:
    cmd, fields = _request(args)
    client = connect(args.socket)
    try:
        resp = client.request(cmd, **fields)
    except (OSError, ConnectionError, ValueError) as e:
        print(f"dataplane: error: {args.socket}: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    if not resp["ok"]:
        raise UsageError(str(resp.get("error")))
    print(describe(cmd, resp["device"]))
    return 0
