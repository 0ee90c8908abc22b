"""``dataplane devices``, ``add-device`` and ``remove-device``: thin clients of the
management socket of ``dataplane serve --mgmt`` (serve/mgmt.py).

Each prints for a person by default and, with ``--json``, what the server answered.  What
the server refuses (no such device, a bad key or value) and a socket that is missing or
is not a management socket are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from dataplane.cli import mgmt_socket
from dataplane.cli.mgmt_socket import add_mgmt_arguments, mgmt_path
from dataplane.errors import UsageError
from dataplane.serve.config import PATH_FIELDS, spec_items
from dataplane.serve.device_keys import BYTE_KEYS, LIMIT_KEYS
from dataplane.spec.targets import image_kind

__all__ = [
    "COMMANDS",
    "add_parsers",
    "describe",
    "human_bytes",
    "main",
    "state_of",
    "table",
]

COMMANDS = ("devices", "add-device", "remove-device")
PATH_KEYS = tuple(f.replace("_", "-") for f in PATH_FIELDS)


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "devices",
        help="list the devices of a running 'dataplane serve --mgmt'",
        description="A table of the devices: name, state (listening, connected, failed), "
        "size, queues and threads, read-only, I/O limits, dirty logging, socket and image.",
    )
    add_mgmt_arguments(p)
    p.add_argument("--json", action="store_true", help="print the server's answer as JSON")
    a = sub.add_parser(
        "add-device",
        help="add a device to a running 'dataplane serve --mgmt'",
        description="Add a device with the keys of 'serve --device' (socket=PATH, "
        "image=FILE|URI, num-queues=N, ...), one KEY=VALUE per argument or comma-separated. "
        "Paths must be absolute: the server does not run in your directory.",
    )
    a.add_argument("--mgmt", type=Path, metavar="SOCK", help=_MGMT_HELP)
    a.add_argument("keys", nargs="+", metavar="KEY=VALUE", help="e.g. socket=/tmp/b.sock")
    a.add_argument("--json", action="store_true", help="print the new device as JSON")
    r = sub.add_parser(
        "remove-device",
        help="remove a device from a running 'dataplane serve --mgmt'",
        description="Stop serving a device: its rings stop (in-flight requests finish), its "
        "connection drops and its socket file is removed.",
    )
    r.add_argument("--mgmt", type=Path, metavar="SOCK", help=_MGMT_HELP)
    r.add_argument("name", metavar="NAME", help="the device")
    r.add_argument("--json", action="store_true", help="print the answer as JSON")


_MGMT_HELP = "the --mgmt socket of serve (default: $DATAPLANE_MGMT, else the default path)"


def human_bytes(n: int) -> str:
    """1073741824 -> "1 GiB", 1610612736 -> "1.5 GiB", 1000 -> "1000 B"."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if n % (1 << shift) == 0 else f"{value:.1f} {unit}"
    return f"{n} B"


def state_of(d: dict[str, Any]) -> str:
    """listening, connected or failed: a ``devices`` entry's state in a word."""
    if d.get("state") == "failed":
        return "failed"
    return "connected" if d.get("connected") else "listening"


def _limits(d: dict[str, Any]) -> str:
    parts = []
    for key in LIMIT_KEYS[:-1]:  # the rates; limit-burst-ms only matters beside one
        value = d.get(key) or 0
        if value:
            shown = f"{human_bytes(value)}/s" if key in BYTE_KEYS else f"{value}/s"
            parts.append(f"{key.removesuffix('-limit')} {shown}")
    return ", ".join(parts) or "-"


def _dirty(d: dict[str, Any]) -> str:
    on = d.get("dirty-log")
    pages = d.get("dirty-pages-logged")
    text = "on" if on else "off"
    return f"{text} ({pages} pages)" if pages is not None else text


def table(devices: list[dict[str, Any]]) -> str:
    """The devices as a table, a column per field; failures spelt out below it."""
    if not devices:
        return "no devices (add one: dataplane add-device socket=PATH image=FILE)"
    dirty = any("dirty-log" in d for d in devices)
    head = ["NAME", "STATE", "SIZE", "QUEUES/THREADS", "RO", "LIMITS"]
    head += ["DIRTY-LOG"] * dirty + ["SOCKET", "IMAGE"]
    rows = []
    for d in devices:
        row = [
            str(d.get("name")),
            state_of(d),
            human_bytes(int(d.get("size", 0))),
            f"{d.get('num-queues')}/{len(d.get('threads', []))}",
            "yes" if d.get("read-only") else "no",
            _limits(d),
        ]
        row += [_dirty(d)] * dirty
        row += [str(d.get("socket")), f"{d.get('image')} ({d.get('image-kind', '?')})"]
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [head, *rows]]  # fmt: skip
    lines += [
        f"{d.get('name')} failed: {d.get('error')}" for d in devices if state_of(d) == "failed"
    ]
    return "\n".join(lines)


def describe(d: dict[str, Any]) -> str:
    """One line for a device just added."""
    threads = len(d.get("threads", []))
    return (
        f"{d.get('name')}: listening on {d.get('socket')}: {d.get('image-kind')} {d.get('image')}, "
        f"{human_bytes(int(d.get('size', 0)))}, {d.get('num-queues')} queue(s) on {threads} "
        f"thread(s){', read-only' if d.get('read-only') else ''}"
    )


def _spec(pairs: list[str]) -> dict[str, object]:
    spec: dict[str, object] = {}
    for pair in pairs:
        spec_items(pair, "add-device", spec)
    for key in PATH_KEYS:
        value = str(spec.get(key, "/"))
        if not (value.startswith(("/", "fd:")) or (key == "image" and image_kind(value) != "file")):
            raise UsageError(
                f"add-device: {key}={value} is a relative path: give an absolute one, e.g. "
                f"{key}={os.path.abspath(value)} (the server does not run in your directory)"
            )
    return spec


def _call(client, cmd: str, **fields: Any) -> dict[str, Any]:
    try:
        resp = client.request(cmd, **fields)
    except (OSError, ConnectionError, ValueError) as e:
        raise UsageError(f"{client.path}: {e}") from None
    if not resp["ok"]:
        raise UsageError(str(resp.get("error")))
    return resp


def main(args: argparse.Namespace) -> int:
    spec = _spec(args.keys) if args.command == "add-device" else None
    path = mgmt_path(args) if args.command == "devices" else mgmt_socket.resolve(args.mgmt)
    with mgmt_socket.connect(path) as client:
        if args.command == "devices":
            devices = _call(client, "devices")["devices"]
            print(json.dumps(devices, indent=2) if args.json else table(devices))
        elif args.command == "add-device":
            device = _call(client, "add-device", spec=spec)["device"]
            print(json.dumps(device, indent=2) if args.json else describe(device))
        else:
            _call(client, "remove-device", name=args.name)
            print(json.dumps({"removed": args.name}) if args.json else f"{args.name}: removed")
    sys.stdout.flush()
    return 0
