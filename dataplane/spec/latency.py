"""A request's latency cut into layers, and the log-linear histograms that hold them.

The device stamps every boundary a request crosses inside it (csrc/device/dp_stats.h):

- ``kick_pop``: the pass that found it woke (a kick, a completion, a poll hit) -> its
  ring's popping began;
- ``pop_submit``: popped -> its batch handed to the engine (limits' waits included);
- ``submit_complete``: handed to the engine -> reaped: the host I/O;
- ``complete_used``: reaped -> used->idx published (the rest of the pass: the
  completions wait while the thread pops and submits the next batch);
- ``used_notify``: used->idx published -> the notify decided (``vring_need_event``
  or the flag, behind a full fence); the call eventfd write comes next, or the
  notification is suppressed.  The write belongs to the guest's side: the guest may
  wake and reap before it returns.

They tile the interval pop-pass wake -> notify: each runs from one stamp to the next.
The bench driver stamps the guest side (csrc/guest/dp_driver.h): ``guest_publish``
(filling the batch -> avail->idx published, just before the kick), and with the
device's sums of absolute pop and notify times, ``kick_to_pop`` (the kick and the
wake-up, up to the pop) and ``notify_reap`` (the interrupt and the driver's wake-up,
up to its reap: the call eventfd write included).  ``GUEST_LAYERS`` in order tile the
driver's round trip.

Histograms are log-linear (csrc/spec/dp_loglin.h): ``2**sub_bits`` buckets per power of
two, values below ``2**sub_bits`` one bucket each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

HOST_LAYERS = ("kick_pop", "pop_submit", "submit_complete", "complete_used", "used_notify")
# The driver's round trip, in order; the host's layers after kick_pop are the middle.
GUEST_LAYERS = ("guest_publish", "kick_to_pop", *HOST_LAYERS[1:], "notify_reap")
LAYER_SUB_BITS = 2  # csrc/device/dp_stats.h DP_LAYER_SUB_BITS (tests/spec/test_spec.py)


def key(name: str) -> str:
    """A layer's JSON key (kebab-case)."""
    return name.replace("_", "-")


def bucket_index(v: int, sub_bits: int) -> int:
    """As csrc/spec/dp_loglin.h's dp_loglin_index."""
    sub = 1 << sub_bits
    if v < sub:
        return max(v, 0)
    shift = v.bit_length() - 1 - sub_bits
    return ((shift + 1) << sub_bits) + ((v >> shift) & (sub - 1))


def bucket_range(i: int, sub_bits: int) -> tuple[int, int]:
    """The values [low, high) that bucket ``i`` counts (the inverse of ``bucket_index``)."""
    sub = 1 << sub_bits
    if i < sub:
        return i, i + 1
    shift = (i >> sub_bits) - 1
    mant = (i & (sub - 1)) | sub
    return mant << shift, (mant + 1) << shift


def percentile(buckets: Mapping[int, int], p: float, sub_bits: int) -> float | None:
    """The value at percentile ``p`` (0..100) of sparse ``{index: count}``, interpolated
    inside its bucket; None when empty."""
    total = sum(buckets.values())
    if total <= 0:
        return None
    rank = max(1.0, p / 100 * total)
    seen = 0
    for i in sorted(buckets):
        n = buckets[i]
        if n <= 0:
            continue
        if seen + n >= rank:
            low, high = bucket_range(i, sub_bits)
            return low + (high - low) * (rank - seen) / n
        seen += n
    raise AssertionError("unreachable")  # pragma: no cover


def clock_delta(later: int, earlier: int) -> int:
    """``later - earlier`` of two sums of absolute times kept mod 2**64, as a signed value."""
    d = (later - earlier) % 2**64
    return d - 2**64 if d >= 2**63 else d


def log2_projection(buckets: Iterable[tuple[int, int]], sub_bits: int, nbuckets: int) -> list[int]:
    """Sparse log-linear buckets as log2 buckets (bucket b: values of bit_length b), exactly:
    a log-linear bucket never straddles a power of two."""
    out = [0] * nbuckets
    for i, n in buckets:
        out[min(bucket_range(i, sub_bits)[0].bit_length(), nbuckets - 1)] += n
    return out


__all__ = [
    "GUEST_LAYERS",
    "HOST_LAYERS",
    "LAYER_SUB_BITS",
    "bucket_index",
    "bucket_range",
    "clock_delta",
    "key",
    "log2_projection",
    "percentile",
]
