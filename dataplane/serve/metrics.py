"""The stats snapshot as Prometheus metrics: a ``prometheus_client`` collector, and its server.

``dataplane serve --metrics ADDR:PORT`` serves ``/metrics`` over HTTP
(``prometheus_client``'s own server, on its own thread); the management socket's
``metrics`` command answers the same exposition.  Both build it from one snapshot taken on
the control plane (``mgmt.metrics_snapshot``), so a scrape never walks the device set while
the event loop changes it.

The families (every one has HELP; counters end in ``_total``):

- ``dataplane_device_info``: one sample per device, its settings as labels;
- per queue (labels ``device``, ``queue``): ``requests_total`` (and ``kind``),
  ``completed_requests_total``, ``read_bytes_total``, ``written_bytes_total``,
  ``request_errors_total`` (and ``status``), ``notifications_total``, ``inflight_requests``;
- per device: ``frontend_connected``, ``frontend_connections_total``,
  ``throttled_requests_total``, ``throttled_seconds_total`` (the I/O limits' waits),
  ``dirty_log`` and ``dirty_pages_logged_total`` (live migration's dirty logging);
- ``dataplane_latency_seconds``: ONE histogram, labels ``device`` and ``layer``
  (kick_pop, pop_submit, submit_complete, complete_used, used_notify: see
  dataplane/spec/latency.py), with ``_sum``;
- ``dataplane_batch_requests``: a histogram of the requests popped per pass, with ``_sum``;
- per dataplane thread (labels ``device``, ``thread``), native datapath only:
  ``thread_passes_total``, ``thread_waits_total``, ``thread_submits_total``,
  ``thread_poll_seconds_total``, ``thread_poll_hits_total``, ``thread_poll_misses_total``.

**Histogram bounds.**  The datapath counts log2 buckets of integer values: bucket i holds
2**(i-1) <= v < 2**i (bucket 0: v == 0), the last one also everything larger.  Buckets are
cumulative in Prometheus, so a bound may be placed after any bucket exactly: the count
``le=(2**i - 1) ns`` is buckets 0..i.  The latency histogram keeps the bounds from 127 ns
to 34 s; the last bucket is ``+Inf``.  The datapath keeps the sums too: ``_sum`` is exact.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dataplane.device.blkdev import BUCKETS
from dataplane.errors import UsageError
from dataplane.spec.latency import HOST_LAYERS as LAT_LAYERS

# Bucket indices after which a bound is exported (see "Histogram bounds" above).
LATENCY_BOUNDS = range(7, 36)  # le = 127 ns ... 34.4 s
BATCH_BOUNDS = range(0, 17)  # le = 0, 1, 3, 7, ... 65535 requests
SCRAPE_TIMEOUT = 5.0

Snapshot = dict[str, Any]  # {"devices": {NAME: {"stats": ..., "info": ..., ...}}}


def _add_histogram(
    family: Metric,
    labels: dict[str, str],
    counts: list[int],
    total: int,
    bounds: Iterable[int],
    divisor: float,
) -> None:
    """``_bucket`` samples at the chosen log2 bounds, ``+Inf``, ``_count`` and ``_sum``."""
    cumulative = list(itertools.accumulate(counts))
    for i in bounds:
        le = repr((2**i - 1) / divisor)
        family.add_sample(f"{family.name}_bucket", {**labels, "le": le}, cumulative[i])
    family.add_sample(f"{family.name}_bucket", {**labels, "le": "+Inf"}, cumulative[-1])
    family.add_sample(f"{family.name}_count", labels, cumulative[-1])
    family.add_sample(f"{family.name}_sum", labels, total / divisor)


class StatsCollector(Collector):
    """Metric families from a snapshot (``snapshot()`` is called once per collect)."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return iter(families(self.snapshot()))


def families(snap: Snapshot) -> list[Metric]:
    """Every family for one snapshot (see the module docstring)."""
    q_labels = ["device", "queue"]
    info = InfoMetricFamily(
        "dataplane_device",
        "A served device and its settings (always 1).",
        labels=["device"],
    )
    # Per queue, by the snapshot's key; a dict value (by kind, by status) is one more label.
    queue_families: dict[str, Metric] = {
        key: family(name, text, labels=[*q_labels, *extra])
        for key, family, name, extra, text in (
            ("requests", CounterMetricFamily, "dataplane_requests", ["kind"],
             "Requests popped from the virtqueue and parsed, by kind."),
            ("completed", CounterMetricFamily, "dataplane_completed_requests", [],
             "Used elements added to the virtqueue (requests completed)."),
            ("bytes_read", CounterMetricFamily, "dataplane_read_bytes", [],
             "Data bytes of reads completed OK."),
            ("bytes_written", CounterMetricFamily, "dataplane_written_bytes", [],
             "Data bytes of writes completed OK."),
            ("errors", CounterMetricFamily, "dataplane_request_errors", ["status"],
             "Requests completed with an error status (ioerr: VIRTIO_BLK_S_IOERR, "
             "unsupp: VIRTIO_BLK_S_UNSUPP)."),
            ("notifies", CounterMetricFamily, "dataplane_notifications", [],
             "Call eventfd writes (interrupts asked of the frontend)."),
            ("inflight", GaugeMetricFamily, "dataplane_inflight_requests", [],
             "Requests popped and not yet completed."),
        )
    }  # fmt: skip
    # Per device: the family and how to read its value from (stats, info).
    per_device: dict[str, tuple[Metric, Callable[[dict[str, Any], dict[str, Any]], float]]] = {
        key: (family(name, text, labels=["device"]), value)
        for key, family, name, value, text in (
            ("connected", GaugeMetricFamily, "dataplane_frontend_connected",
             lambda stats, meta: 1 if meta["connected"] else 0,
             "1 while a vhost-user frontend is connected to the device's socket."),
            ("connections", CounterMetricFamily, "dataplane_frontend_connections",
             lambda stats, meta: meta["connections"],
             "vhost-user connections accepted on the device's socket."),
            ("throttled", CounterMetricFamily, "dataplane_throttled_requests",
             lambda stats, meta: stats.get("throttled", 0),
             "Requests held back by the device's I/O limits (iops-limit= ...)."),
            ("throttled_seconds", CounterMetricFamily, "dataplane_throttled_seconds",
             lambda stats, meta: stats.get("throttled_ns", 0) / 1e9,
             "Time requests spent held back by the device's I/O limits, summed."),
            ("dirty_log", GaugeMetricFamily, "dataplane_dirty_log",
             lambda stats, meta: 1 if stats.get("dirty-log") else 0,
             "1 while the device logs the guest pages it writes (live migration, LOG_ALL)."),
            ("dirty_pages_logged", CounterMetricFamily, "dataplane_dirty_pages_logged",
             lambda stats, meta: stats.get("dirty-pages-logged", 0),
             "Guest pages the device marked in the frontend's dirty log (live migration)."),
        )
    }  # fmt: skip
    latency = Metric(
        "dataplane_latency_seconds",
        "Per-request latency of each layer of the data path: kick_pop (wake-up to pop), "
        "pop_submit (pop to engine submit), submit_complete (the host I/O), complete_used "
        "(reaped to used idx published), used_notify (used idx published to interrupt sent or "
        "suppressed).",
        "histogram",
    )
    batch = Metric(
        "dataplane_batch_requests",
        "Requests popped per pass of a dataplane thread (passes that popped any).",
        "histogram",
    )
    loop = {
        key: CounterMetricFamily(f"dataplane_thread_{name}", text, labels=["device", "thread"])
        for key, name, text in (
            ("passes", "passes", "Passes of the C datapath's loop."),
            ("waits", "waits", "Blocking waits of the C datapath's loop."),
            ("submits", "submits", "Engine submissions (one per batch)."),
            ("poll_hits", "poll_hits", "Adaptive polling windows that found work."),
            ("poll_misses", "poll_misses", "Adaptive polling windows that found none."),
        )
    }
    poll_seconds = CounterMetricFamily(
        "dataplane_thread_poll_seconds",
        "Time spent polling the rings before sleeping (--poll-us).",
        labels=["device", "thread"],
    )
    for name, dev in snap.get("devices", {}).items():
        stats, meta = dev["stats"], dev["info"]
        info.add_metric(
            [name],
            {
                "datapath": str(stats.get("datapath")),
                "engine": str(meta["engine"]),
                "image_kind": str(meta["image-kind"]),
                "cache": str(meta.get("cache", "")),  # a file's only
                "read_only": "true" if meta["read-only"] else "false",
                "num_queues": str(meta["num-queues"]),
                "iothreads": str(meta["iothreads"]),
            },
        )
        for q in stats.get("queues", []):
            labels = [name, str(q["index"])]
            for key, family in queue_families.items():
                value = q[key]
                if isinstance(value, dict):  # requests by STAT_KINDS, errors by status
                    for sub, n in value.items():
                        family.add_metric([*labels, sub], n)
                else:
                    family.add_metric(labels, value)
        for family, value in per_device.values():
            family.add_metric([name], value(stats, meta))
        for layer in LAT_LAYERS:
            counts, total = stats["lat_ns"][layer], stats["lat_sum_ns"][layer]
            labels = {"device": name, "layer": layer}
            _add_histogram(latency, labels, counts, total, LATENCY_BOUNDS, 1e9)
        hist, total = stats["batch_hist"], stats["batch_sum"]
        _add_histogram(batch, {"device": name}, hist, total, BATCH_BOUNDS, 1.0)
        for t in stats.get("iothreads", []):
            counters = t.get("loop")
            if not counters:
                continue  # the Python datapath keeps no loop counters
            for key, family in loop.items():
                family.add_metric([name, t["name"]], counters[key])
            poll_seconds.add_metric([name, t["name"]], counters["poll_ns"] / 1e9)
    return [
        info,
        *queue_families.values(),
        *(family for family, _ in per_device.values()),
        latency,
        batch,
        *loop.values(),
        poll_seconds,
    ]


def registry_for(snapshot: Callable[[], Snapshot]) -> CollectorRegistry:
    """A registry of the device metrics and the process's own (CPU, memory, fds)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(snapshot))
    ProcessCollector(registry=registry)
    return registry


def exposition(snap: Snapshot) -> str:
    """The text format of one snapshot (the ``metrics`` management command)."""
    return generate_latest(registry_for(lambda: snap)).decode()


@dataclass(slots=True)
class MetricsServer:
    """``/metrics`` over HTTP on its own thread; snapshots are taken on ``loop``."""

    addr: str
    port: int
    loop: asyncio.AbstractEventLoop
    take_snapshot: Callable[[], Snapshot]
    _httpd: Any = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Listen (UsageError if the address is taken or not this host's)."""
        registry = registry_for(self._snapshot_on_loop)
        try:
            self._httpd, self._thread = start_http_server(self.port, self.addr, registry)
        except OSError as e:
            raise UsageError(
                f"--metrics {self.addr}:{self.port}: cannot listen: {e.strerror or e}"
            ) from None
        self.port = self._httpd.server_address[1]

    def _snapshot_on_loop(self) -> Snapshot:
        async def take() -> Snapshot:
            return self.take_snapshot()

        return asyncio.run_coroutine_threadsafe(take(), self.loop).result(SCRAPE_TIMEOUT)

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None


assert max(LATENCY_BOUNDS) + 1 < BUCKETS and max(BATCH_BOUNDS) + 1 < BUCKETS
