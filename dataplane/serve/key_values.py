"""How the value of a device key is read: ``parse(key, value) -> value``, for every form.

Each parser takes the key's name and the value as ``--device`` (a string), TOML or
JSON (a string, number, boolean or list) gives it, and raises ValueError with one
line that starts ``key=value``.  The table of keys (device_keys.py) names one per key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from dataplane.argtypes import SIZE_EXAMPLE, parse_size
from dataplane.device.engines.delay import parse_test_delay as engine_test_delay
from dataplane.device.engines.remote import MAX_SECONDS
from dataplane.serve import activation
from dataplane.serve.activation import InheritedSocket
from dataplane.spec.targets import check_target

_TRUE = ("on", "true", "yes", "1")
_FALSE = ("off", "false", "no", "0")

Parser = Callable[[str, object], object]


def parse_int(key: str, value: object) -> int:
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            pass
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"{key}={value!r} is not an integer")


def parse_bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    raise ValueError(f"{key}={value!r} is not on or off")


def parse_str(key: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key}={value!r} must be a non-empty string")
    return value


def parse_path(key: str, value: object) -> Path:
    return Path(parse_str(key, value))


def choice(allowed: tuple[str, ...]) -> Parser:
    """A parser that takes one of ``allowed``."""

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


def parse_socket(key: str, value: object) -> Path | InheritedSocket:
    """A socket path, or ``fd:N`` / ``fd:NAME`` (an inherited listening socket)."""
    text = parse_str(key, value)
    if text.startswith("fd:"):
        return activation.parse_fd_socket(text, key)
    return Path(text)


def parse_image(key: str, value: object) -> Path | str:
    """An image file's path, or a remote disk's target as a string (its form checked)."""
    text = parse_str(key, value)
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


def parse_rate(key: str, value: object) -> int:
    """A number of bytes per second, with an optional size suffix (``10M``: 10 MiB/s)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{key}={value!r} is not an integer")
    try:
        return parse_size(value)
    except ValueError:
        raise ValueError(
            f"{key}={value!r} is not a number of bytes per second ({SIZE_EXAMPLE})"
        ) from None


def parse_test_delay(key: str, value: object) -> object:
    """``EVERY:US`` (the test-delay key: dataplane/test_hooks.py)."""
    return engine_test_delay(str(value))
