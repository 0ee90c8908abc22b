"""The device keys as flags of ``dataplane serve``: ``--KEY VALUE`` for each key of the table
(serve/device_keys.py), which together describe the one ``--socket``/``--image`` device;
and the ``--device`` help, which lists the keys."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from dataplane.serve.device_keys import KEYS, Key, device_help

__all__ = ["SINGLE_ONLY", "add_key_flags", "given_fields"]

# Flags of the --socket/--image device that are no device key (no --device, TOML or JSON form).
SINGLE_ONLY = ("record", "trace_requests")
_ONLY = {"file": "files only", "nbd": "NBD only", "rbd": "RBD only"}


def _converter(key: Key) -> Callable[[str], object]:
    """The key's parser as an argparse ``type=`` (argparse names the flag already)."""

    def convert(text: str) -> object:
        try:
            return key.parse(key.name, text)
        except ValueError as e:
            message = str(e).removeprefix(f"{key.name}=").removeprefix(f"{key.name}: ")
            message = message.replace(f"e.g. {key.name}=", f"e.g. --{key.name} ")
            raise argparse.ArgumentTypeError(message) from None

    return convert


def _help(key: Key) -> str:
    only = [_ONLY[key.kinds[0]]] if len(key.kinds) == 1 else []
    only += ["native datapath only"] * key.c_only
    text = f"{', '.join(only)}: {key.help}" if only else key.help
    if not key.is_bool and key.default_text != "-" and not key.default_text.startswith("req"):
        text += f" (default: {key.default_text})"
    return text.replace("%", "%%")


def add_key_flags(serve: argparse.ArgumentParser) -> None:
    """A flag for every key (test-only keys have none), and ``--device``."""
    for key in KEYS:
        if key.test_only:
            continue
        flag = f"--{key.name}"
        if key.is_bool:
            serve.add_argument(flag, action="store_true", default=None, help=_help(key))
        elif key.choices:
            serve.add_argument(flag, choices=key.choices, help=_help(key))
        else:
            serve.add_argument(flag, type=_converter(key), metavar=key.value, help=_help(key))
    serve.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="SPEC",
        help=f"another device: {device_help()}; repeatable",
    )


def given_fields(args: argparse.Namespace) -> list[str]:
    """The single-device flags given: their DeviceOptions fields (limits: their names)."""
    flags = [k.field for k in KEYS if not k.test_only] + list(SINGLE_ONLY)
    return [f for f in flags if getattr(args, f) is not None]
