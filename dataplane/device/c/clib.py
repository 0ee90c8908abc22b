"""The compiled cffi extension, checked at import.

Everything else imports ``ffi`` and ``lib`` from here, never from
``dataplane._native`` directly, so that a stale build fails loudly once.
"""

from __future__ import annotations

from dataplane._native import ffi, lib

EXPECTED_ABI_VERSION = 1

if lib.DP_NATIVE_ABI_VERSION != EXPECTED_ABI_VERSION:  # pragma: no cover - build mismatch
    raise ImportError(
        f"dataplane._native ABI {lib.DP_NATIVE_ABI_VERSION} != {EXPECTED_ABI_VERSION}: "
        "rebuild with 'pip install .'"
    )

__all__ = ["ffi", "lib"]
