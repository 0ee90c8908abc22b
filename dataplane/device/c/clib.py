"""The device wing's compiled cffi extension (csrc/spec and csrc/device), checked at import.

Everything else imports ``ffi`` and ``lib`` from here, never from
``dataplane.device._c`` directly, so that a stale build fails loudly once.
"""

from __future__ import annotations

from dataplane.device._c import ffi, lib

ABI_VERSION = 1  # csrc/build.py's ABI_VERSION

if lib.DP_ABI_VERSION != ABI_VERSION:  # pragma: no cover - build mismatch
    raise ImportError(
        f"dataplane.device._c ABI {lib.DP_ABI_VERSION} != {ABI_VERSION}: "
        "rebuild with 'pip install .'"
    )

__all__ = ["ffi", "lib"]
