"""Which management socket a command means, and a checked connection to it.

``--mgmt SOCK`` names it.  Left out, the commands take ``$DATAPLANE_MGMT``, and then
the default path, as libvirt and qemu-storage-daemon users expect a per-host daemon
socket under the runtime directory: ``/run/dataplane/mgmt.sock`` for root,
``$XDG_RUNTIME_DIR/dataplane/mgmt.sock`` for anyone else.  ``dataplane serve --mgmt``
without a path listens at the same place (``$DATAPLANE_MGMT``, else the default), so
that the commands find it without being told.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dataplane.errors import UsageError, usage_on_os_error
from dataplane.serve.mgmt_client import MgmtClient

__all__ = [
    "ENV",
    "add_mgmt_arguments",
    "connect",
    "default_path",
    "mgmt_path",
    "resolve",
    "serve_path",
]

ENV = "DATAPLANE_MGMT"


def add_mgmt_arguments(p: argparse.ArgumentParser) -> None:
    """``[SOCKET]`` or ``--mgmt SOCK`` (else $DATAPLANE_MGMT, else the default path)."""
    p.add_argument(
        "socket", nargs="?", type=Path, metavar="SOCKET",
        help="the --mgmt socket of serve (default: $DATAPLANE_MGMT, else the default path)",
    )  # fmt: skip
    p.add_argument("--mgmt", type=Path, metavar="SOCK", help="the same as SOCKET")


def mgmt_path(args: argparse.Namespace) -> Path:
    """The socket ``add_mgmt_arguments`` resolved (UsageError if given twice or not found)."""
    if args.socket is not None and args.mgmt is not None and args.socket != args.mgmt:
        raise UsageError(f"two management sockets given: {args.socket} and --mgmt {args.mgmt}")
    return resolve(args.mgmt or args.socket)


def default_path() -> Path | None:
    """``/run/dataplane/mgmt.sock`` (root), ``$XDG_RUNTIME_DIR/dataplane/mgmt.sock`` (others),
    or None where a non-root user has no runtime directory."""
    if os.geteuid() == 0:
        return Path("/run/dataplane/mgmt.sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime, "dataplane", "mgmt.sock") if runtime else None


def _default_text() -> str:
    path = default_path()
    return str(path) if path is not None else "none: $XDG_RUNTIME_DIR is not set"


def resolve(given: Path | None) -> Path:
    """The socket a client command means: ``--mgmt``, ``$DATAPLANE_MGMT``, or the default
    path when a server listens there (UsageError if none of them)."""
    if given is not None:
        return given
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    path = default_path()
    if path is not None and path.is_socket():
        return path
    raise UsageError(
        f"no management socket: pass --mgmt SOCK, set ${ENV}, or start 'dataplane serve "
        f"--mgmt' (its default path: {_default_text()})"
    )


def serve_path() -> Path:
    """Where ``serve --mgmt`` without a path listens: ``$DATAPLANE_MGMT``, else the default
    (its directory made, mode 0700, if missing)."""
    env = os.environ.get(ENV)
    path = Path(env) if env else default_path()
    if path is None:
        raise UsageError(
            f"--mgmt without a path needs ${ENV} or $XDG_RUNTIME_DIR (default path: "
            f"{_default_text()}): give --mgmt PATH"
        )
    if not env:
        cannot = f"--mgmt: cannot make {path.parent}"
        with usage_on_os_error(cannot, cannot):
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def connect(path: Path) -> MgmtClient:
    """A client of ``path``, checked to be a dataplane management socket (UsageError if not)."""
    if path.exists() and not path.is_socket():
        kind = "a directory" if path.is_dir() else "a regular file" if path.is_file() else "a file"
        raise UsageError(
            f"{path} is {kind}, not a socket: give the --mgmt socket of 'dataplane serve'"
        )
    missing = f"{path}: no such socket (is 'dataplane serve --mgmt {path}' running?)"
    with usage_on_os_error(missing, f"{path}: cannot connect (is 'dataplane serve' running?)"):
        client = MgmtClient(path, timeout=5.0)
    try:
        client.request("devices")
    except (OSError, ValueError, ConnectionError) as e:
        client.close()
        if isinstance(e, ConnectionError):
            why = "it closed the connection"
        elif isinstance(e, TimeoutError):
            why = "it did not answer within 5 s"
        else:
            why = "it answered something else"
        raise UsageError(
            f"{path} is not a dataplane management socket ({why}; a device's vhost-user "
            "socket?): give the socket of 'dataplane serve --mgmt'"
        ) from None
    return client
