"""argparse ``type=`` converters shared by every subcommand, each failing with one clear line."""

from __future__ import annotations

import argparse
from collections.abc import Callable


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
