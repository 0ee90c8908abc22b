"""``dataplane bench --layers FILE.png``: a request's round trip cut into its layers.

For ``ours`` the bench starts the server with a management socket and reads its stats
before and after each run (``ServerStats``: the CLI passes the reader, the guest wing
knows no server module).  The layers of dataplane/spec/latency.py ``GUEST_LAYERS``
tile the driver's round trip, publish -> reap, exactly:

- ``guest_publish``: the driver's own sum (kick - publish, csrc/guest/dp_driver.h);
- ``kick_to_pop``: the device's sum of absolute pop times less the driver's sum of
  absolute kick times, over the same requests (both CLOCK_MONOTONIC, both mod 2**64);
- ``pop_submit`` .. ``used_notify``: the device's per-layer sums;
- ``notify_reap``: the driver's sum of reap times less the device's of notify times.

Every request of the run is counted on both sides (the stats are read once the driver
has reaped everything), so the means of the layers add up to the driver's mean round
trip, and the picture's stacked bar is as long as the end-to-end bar beside it.  The
other targets (qemu-storage-daemon, a socket, the ideal device) give the guest-side
total only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dataplane.spec import latency

ServerStats = Callable[[Path], dict[str, Any]]  # a --mgmt socket -> its "stats" response
SETTLE_S = 5.0  # how long the device may take to count the last pass (it is microseconds)
ROUND_TRIP = "round_trip"
COUNT = "n"

__all__ = [
    "ServerStats",
    "device_sums",
    "layer_means",
    "read_settled",
    "read_sums",
    "run_layer_sums",
]


def read_sums(read: ServerStats, mgmt: Path) -> dict[str, int] | None:
    """The device's sums now, or None if its management socket does not answer with them."""
    try:
        return device_sums(read(mgmt))
    except (OSError, ValueError, RuntimeError, KeyError):
        return None


def device_sums(resp: dict[str, Any]) -> dict[str, int] | None:
    """The device's layer sums over all devices and queues of a stats response (None: a
    server without layer stats)."""
    out = {k: 0 for k in latency.HOST_LAYERS}
    out |= {"pop_at": 0, "notify_at": 0, COUNT: 0}
    for stats in resp.get("devices", {}).values():
        for q in stats.get("queues", []):
            layers, clock = q.get("layers"), q.get("layer-clock")
            if layers is None or clock is None:
                return None
            for name in latency.HOST_LAYERS:
                out[name] += layers[latency.key(name)]["sum-ns"]
            out[COUNT] += layers[latency.key(latency.HOST_LAYERS[0])]["count"]
            out["pop_at"] = (out["pop_at"] + clock["pop-at-ns"]) % 2**64
            out["notify_at"] = (out["notify_at"] + clock["notify-at-ns"]) % 2**64
    return out


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: latency.clock_delta(after[k], before[k]) for k in after}


def read_settled(
    read: ServerStats, mgmt: Path, before: dict[str, int] | None, ios: int
) -> dict[str, int] | None:
    """The device's sums over the run: read until it has counted all ``ios`` requests."""
    if before is None:
        return None
    deadline = time.monotonic() + SETTLE_S
    while True:
        after = read_sums(read, mgmt)
        if after is None:
            return None
        d = _delta(after, before)
        if d[COUNT] >= ios or time.monotonic() > deadline:
            return d if d[COUNT] == ios else None
        time.sleep(0.01)


def run_layer_sums(guest: Sequence[dict[str, int]], ios: int, device: dict[str, int] | None
                   ) -> dict[str, int]:  # fmt: skip
    """One run's sums: the round trip and ``guest_publish`` always; with the device's sums
    over the same requests, every layer of ``GUEST_LAYERS``."""
    lat = sum(g["lat"] for g in guest)
    out = {COUNT: ios, ROUND_TRIP: lat, "guest_publish": sum(g["publish"] for g in guest)}
    if device is None:
        return out
    kick_at = sum(g["kick_at"] for g in guest) % 2**64
    reap_at = sum(g["reap_at"] for g in guest) % 2**64
    out["kick_to_pop"] = latency.clock_delta(device["pop_at"], kick_at)
    for name in latency.HOST_LAYERS[1:]:
        out[name] = device[name]
    out["notify_reap"] = latency.clock_delta(reap_at, device["notify_at"])
    return out


def merge(runs: Sequence[dict[str, int] | None]) -> dict[str, int] | None:
    """Several runs' sums as one: the keys all of them have."""
    if not runs or any(r is None for r in runs):
        return None
    keys = set.intersection(*(set(r) for r in runs if r is not None))
    return {k: sum(r[k] for r in runs if r is not None) for k in keys}


def layer_means(sums: dict[str, int] | None) -> dict[str, float] | None:
    """Mean ns per request of the round trip and of each layer measured."""
    if not sums or not sums.get(COUNT):
        return None
    n = sums[COUNT]
    return {k: v / n for k, v in sums.items() if k != COUNT}
