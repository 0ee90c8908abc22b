"""The one spelling of JSON keys that the project writes: kebab-case, as QMP and the device
keys spell theirs (``throttled-ns``, ``bytes-read``).  Python's names are snake_case, so the
dicts are built with ``_`` and spelt with ``-`` where they leave the process (the management
socket, ``dataplane bench --json``); Prometheus names stay snake_case.
"""

from __future__ import annotations

from typing import Any

__all__ = ["kebab_keys", "snake_keys"]


def _respell(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {str(k).replace(old, new): _respell(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_respell(v, old, new) for v in value]
    return value


def kebab_keys(value: Any) -> Any:
    """``value`` with ``-`` for ``_`` in every dict key, at every depth (values untouched)."""
    return _respell(value, "_", "-")


def snake_keys(value: Any) -> Any:
    """The inverse, for a reader written in Python's names (bench/summarize.py)."""
    return _respell(value, "-", "_")
