"""The guest wing's compiled cffi extension (the bench driver and its ring), checked at import.

The guest wing imports ``ffi`` and ``lib`` from here, never from
``dataplane.guest._native`` directly, so that a stale build fails loudly once.
"""

from __future__ import annotations

from dataplane.guest._native import ffi, lib

EXPECTED_ABI_VERSION = 1

if lib.DP_NATIVE_ABI_VERSION != EXPECTED_ABI_VERSION:  # pragma: no cover - build mismatch
    raise ImportError(
        f"dataplane.guest._native ABI {lib.DP_NATIVE_ABI_VERSION} != {EXPECTED_ABI_VERSION}: "
        "rebuild with 'pip install .'"
    )

__all__ = ["ffi", "lib"]
