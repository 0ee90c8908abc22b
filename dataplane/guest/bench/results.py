"""One run's figures, and a target's figures summed over its rounds."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from dataplane.guest.bench import hist as h
from dataplane.guest.bench import layers
from dataplane.guest.bench.trace import KINDS

LAT_KEYS = ("p50", "p99", "p999")
_PCT = {"p50": 50.0, "p99": 99.0, "p999": 99.9}


def lat_from_hist(hist: list[int]) -> dict[str, float | None]:
    """Latency summary in ns from a C histogram."""
    out: dict[str, float | None] = {k: h.percentile(hist, p) for k, p in _PCT.items()}
    out["mean"] = h.mean(hist)
    out["max"] = h.maximum(hist)
    return out


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


@dataclass
class RunMetrics:
    """What one run of one target measured."""

    target: str
    kind: str
    round: int
    ios: int
    ops: dict[str, int]
    bytes_read: int
    bytes_written: int
    wall_s: float
    lat_ns: dict[str, float | None]
    hist: list[int] | None = None  # the driver's histogram (vhost-user targets)
    backend_cpu_s: float | None = None
    driver_cpu_s: float | None = None
    kicks: int | None = None
    wakeups: int | None = None
    layer_sums: dict[str, int] | None = None  # bench/layers.py: the round trip and its layers

    @property
    def iops(self) -> float:
        return self.ios / self.wall_s if self.wall_s else 0.0

    @property
    def bw_mib_s(self) -> float:
        if not self.wall_s:
            return 0.0
        return (self.bytes_read + self.bytes_written) / self.wall_s / (1 << 20)

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "kind": self.kind,
            "round": self.round,
            "ios": self.ios,
            "ops": self.ops,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "runtime_s": self.wall_s,
            "iops": self.iops,
            "bw_mib_s": self.bw_mib_s,
            "lat_us": _lat_us(self.lat_ns),
            "backend_cpu_s": self.backend_cpu_s,
            "backend_cpu_pct": _pct(self.backend_cpu_s, self.wall_s),
            "iops_per_backend_cpu_s": _div(self.ios, self.backend_cpu_s),
            "driver_cpu_s": self.driver_cpu_s,
            "driver_cpu_pct": _pct(self.driver_cpu_s, self.wall_s),
            "kicks": self.kicks,
            "calls": self.wakeups,
            "layer_sums_ns": self.layer_sums,
        }


def _pct(cpu: float | None, wall: float) -> float | None:
    return cpu / wall * 100 if cpu is not None and wall else None


def _lat_us(lat_ns: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (v / 1000 if v is not None else None) for k, v in lat_ns.items()}


def _sum_opt(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


@dataclass
class Summary:
    """A target over all its rounds: totals, and latency from the merged histograms."""

    target: str
    kind: str
    rounds: list[RunMetrics] = field(default_factory=list)

    @property
    def total(self) -> RunMetrics:
        r = self.rounds
        hists = [x.hist for x in r]
        if all(x is not None for x in hists):
            merged = h.merge(x for x in hists if x is not None)
            lat = lat_from_hist(merged)
        else:  # fio: percentiles are not additive; average the rounds'
            lat = {
                k: (statistics.fmean(v) if all(v) else None)
                for k in (*LAT_KEYS, "mean", "max")
                for v in [[x.lat_ns.get(k) for x in r]]
            }
        return RunMetrics(
            target=self.target,
            kind=self.kind,
            round=0,
            ios=sum(x.ios for x in r),
            ops={k: sum(x.ops.get(k, 0) for x in r) for k in KINDS},
            bytes_read=sum(x.bytes_read for x in r),
            bytes_written=sum(x.bytes_written for x in r),
            wall_s=sum(x.wall_s for x in r),
            lat_ns=lat,
            backend_cpu_s=_sum_opt([x.backend_cpu_s for x in r]),
            driver_cpu_s=_sum_opt([x.driver_cpu_s for x in r]),
            kicks=_sum_opt([x.kicks for x in r]),  # type: ignore[arg-type]
            wakeups=_sum_opt([x.wakeups for x in r]),  # type: ignore[arg-type]
            layer_sums=layers.merge([x.layer_sums for x in r]),
        )

    def to_json(self, first: Summary | None, limit_iops: float | None = None) -> dict:
        t = self.total
        out = t.to_json()
        del out["round"]
        out["ratio"] = ratios(t, first.total if first is not None else t)
        out["of_limit"] = _div(t.iops, limit_iops)
        out["rounds"] = [x.to_json() for x in self.rounds]
        return out


def ratios(t: RunMetrics, base: RunMetrics) -> dict[str, float | None]:
    """This target against the first one: IOPS, latency and backend efficiency."""
    out: dict[str, float | None] = {"iops": _div(t.iops, base.iops)}
    for k in LAT_KEYS:
        out[f"lat_{k}"] = _div(t.lat_ns.get(k), base.lat_ns.get(k))
    out["iops_per_backend_cpu_s"] = _div(
        _div(t.ios, t.backend_cpu_s), _div(base.ios, base.backend_cpu_s)
    )
    return out


def limit_iops(summaries: list[Summary]) -> float | None:
    """The ``limit`` target's IOPS in this run, if it ran: what the ring alone allows."""
    for s in summaries:
        if s.kind == "limit":
            return s.total.iops
    return None
