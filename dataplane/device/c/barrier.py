"""Memory ordering for the Python reference (csrc/spec/dp_barrier.h), bound once: no wrapper.

The reference calls these per request, as the C ring does inline; each is the
C function itself, so a call costs what a cffi call costs and nothing more.
"""

from __future__ import annotations

from dataplane.device.c import lib

# Read avail->idx with acquire ordering: what the driver wrote before it is visible after.
avail_idx_acquire = lib.dp_avail_idx_acquire
# Publish used->idx with release ordering: the used elements and buffers go out first.
used_idx_release = lib.dp_used_idx_release
# A full fence between publishing used and reading used_event or avail->flags: without it
# the driver's new used_event may be missed, and with it the notification it waits for.
smp_mb = lib.dp_smp_mb

__all__ = ["avail_idx_acquire", "smp_mb", "used_idx_release"]
