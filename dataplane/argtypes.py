"""argparse ``type=`` converters shared by every subcommand, each failing with one clear line."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from fractions import Fraction

# Size suffixes as truncate(1) and QEMU read them: K, M, G... (and KiB, MiB...) are powers of
# 1024; KB, MB, GB... (truncate's) are powers of 1000.  Case does not matter; B alone is bytes.
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?|0[xX][0-9a-fA-F]+)\s*([kmgtpe]?)(i?b?)", re.IGNORECASE)
_SIZE_POWERS = "kmgtpe"
SIZE_EXAMPLE = "e.g. 4096, 4k, 10M, 1.5G, 2GiB, 1GB"


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An integer (any base Python's ``int(text, 0)`` reads) in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        _check_range(text, value, minimum, maximum, "")
        return value

    return parse


def parse_size(text: str | int) -> int:
    """Bytes from ``4096``, ``4k``, ``10M``, ``1.5G``, ``2GiB`` (binary) or ``1GB`` (decimal,
    as truncate reads it); ValueError (one line) if not a whole, non-negative number of bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"{text!r} is negative")
        return text
    m = _SIZE_RE.fullmatch(str(text).strip()) if isinstance(text, str) else None
    if (
        m is None
        or (m[3].lower() == "ib" and not m[2])
        or (m[3] and m[3].lower() not in ("b", "ib"))
    ):
        raise ValueError(f"{text!r} is not a size ({SIZE_EXAMPLE})")
    number, unit, tail = m[1], m[2].lower(), m[3].lower()
    value = Fraction(int(number, 16)) if number[:2].lower() == "0x" else Fraction(number)
    if unit:
        base = 1000 if tail == "b" else 1024
        value *= base ** (_SIZE_POWERS.index(unit) + 1)
    if value.denominator != 1:
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(value)


def size(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """A size in bytes with an optional suffix (``parse_size``) in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = parse_size(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        _check_range(text, value, minimum, maximum, " bytes")
        return value

    return parse


def seconds(minimum: float | None = None, maximum: float | None = None) -> Callable[[str], float]:
    """A positive number of seconds (an ``s`` suffix is allowed), optionally in a range."""

    def parse(text: str) -> float:
        try:
            value = float(text.removesuffix("s"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        _check_range(text, value, minimum, maximum, " seconds")
        return value

    return parse


def _check_range(
    text: str, value: float, minimum: float | None, maximum: float | None, unit: str
) -> None:
    if maximum is not None:
        low = 0 if minimum is None else minimum
        if not low <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{text!r} is not from {low:g} to {maximum:g}{unit}")
    elif minimum is not None and value < minimum:
        if minimum == 1:
            raise argparse.ArgumentTypeError(f"{text!r} must be positive")
        if minimum == 0:
            raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum:g}")


positive = integer(1)
non_negative = integer(0)
