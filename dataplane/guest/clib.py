"""The guest wing's compiled cffi extension (csrc/spec and csrc/guest: the bench driver and
its ring), checked at import.

The guest wing imports ``ffi`` and ``lib`` from here, never from
``dataplane.guest._c`` directly, so that a stale build fails loudly once.
"""

from __future__ import annotations

from dataplane.guest._c import ffi, lib

ABI_VERSION = 1  # csrc/build.py's ABI_VERSION
if lib.DP_ABI_VERSION != ABI_VERSION:  # pragma: no cover - build mismatch
    raise ImportError("dataplane.guest._c is stale: rebuild it ('pip install -e .')")

__all__ = ["ffi", "lib"]
