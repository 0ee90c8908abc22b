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
from dataplane.cli.mgmt_socket import connect, resolve
from dataplane.errors import UsageError
from dataplane.serve.device_keys import LIMIT_KEYS

__all__ = ["COMMANDS", "add_parsers", "main"]

COMMANDS = ("set-limits", "resize")


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "set-limits",
        usage="dataplane set-limits [-h] [--mgmt SOCK] [SOCKET] NAME KEY=VALUE...",
        help="change the I/O limits of a device of a running 'dataplane serve --mgmt'",
        description="Change a device's I/O limits live: KEY=VALUE for the keys given "
        f"({', '.join(LIMIT_KEYS)}; 0: no limit; the byte rates take a suffix, 10M); the "
        "others stay as they are.",
    )
    p.add_argument("words", nargs="+", metavar="[SOCKET] NAME KEY=VALUE", help=_WORDS_HELP)
    p.add_argument("--mgmt", type=Path, metavar="SOCK", help="the same as SOCKET")
    r = sub.add_parser(
        "resize",
        usage="dataplane resize [-h] [--mgmt SOCK] [SOCKET] NAME [SIZE]",
        help="tell a running guest that its disk grew (its image file, or to SIZE)",
        description="Without SIZE, re-read the size of the device's image file (after it "
        "was grown); with SIZE, grow the file to SIZE bytes (3G, 2GiB, 1500M: as truncate -s "
        "reads them).  Shrinking is refused.  The guest is told through the vhost-user "
        "backend channel (a config-change interrupt).",
    )
    r.add_argument("words", nargs="+", metavar="[SOCKET] NAME [SIZE]", help=_WORDS_HELP)
    r.add_argument("--mgmt", type=Path, metavar="SOCK", help="the same as SOCKET")


_WORDS_HELP = (
    "SOCKET: the --mgmt socket of serve (default: $DATAPLANE_MGMT, else the default path); "
    "a first word is SOCKET when it names a socket that exists or has a '/', or when the "
    "words would not fit the command without it"
)


def _is_socket(word: str) -> bool:
    return "/" in word or Path(word).is_socket()


def _is_size(word: str) -> bool:
    try:
        argtypes.parse_size(word)
    except ValueError:
        return False
    return True


def _split(args: argparse.Namespace) -> tuple[Path, list[str]]:
    """The management socket and the words after it: ``[SOCKET] NAME ...``."""
    words = list(args.words)
    # A first word that names a socket is SOCKET when more than NAME follows it; for
    # set-limits the KEY=VALUE words settle it (a NAME has no "=").
    if args.command == "set-limits":
        given = len(words) >= 2 and "=" not in words[1]
    else:
        given = len(words) == 3 or (
            len(words) == 2 and (_is_socket(words[0]) or not _is_size(words[1]))
        )
    if given:
        if args.mgmt is not None:
            raise UsageError(f"two management sockets given: {words[0]} and --mgmt {args.mgmt}")
        return Path(words[0]), words[1:]
    return resolve(args.mgmt), words


def _limits(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"{pair!r} is not KEY=VALUE (e.g. iops-limit=5000)")
        out[key] = value
    return out


def _request(args: argparse.Namespace, words: list[str]) -> tuple[str, dict[str, Any]]:
    name, rest = words[0], words[1:]
    if args.command == "set-limits":
        if not rest:
            raise UsageError("set-limits: give NAME and at least one KEY=VALUE")
        return "set-limits", {"name": name, "limits": _limits(rest)}
    fields: dict[str, Any] = {"name": name}
    if len(rest) > 1:
        raise UsageError(f"resize: too many arguments: {' '.join(words)} (NAME [SIZE])")
    if rest:
        try:
            fields["size"] = _SIZE(rest[0])
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"argument SIZE: {e}") from None
    return "resize", fields


_SIZE = argtypes.size(1)


def describe(cmd: str, device: dict[str, Any]) -> str:
    """The one line printed for the device as the server answered it."""
    if cmd == "set-limits":
        keys = " ".join(f"{k}={device[k]}" for k in LIMIT_KEYS)
        return f"{device['name']}: {keys}"
    told = device["told"]
    told = "the frontend was told" if told is True else f"the frontend was not told: {told}"
    return f"{device['name']}: {device['size']} bytes; {told}"


def main(args: argparse.Namespace) -> int:
    args.socket, words = _split(args)
    cmd, fields = _request(args, words)
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
