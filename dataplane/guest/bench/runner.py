"""Runs every target in turn, interleaved over the rounds, and collects the figures."""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from dataplane.guest.bench import hist as h
from dataplane.guest.bench.connection import BenchConnection
from dataplane.guest.bench.errors import BenchError
from dataplane.guest.bench.fio import run_fio
from dataplane.guest.bench.guest_threads import DriverRun, QueueResult, RingDevice
from dataplane.guest.bench.layers import ServerStats, read_settled, read_sums, run_layer_sums
from dataplane.guest.bench.layout import RingShape
from dataplane.guest.bench.limit import LimitDevice
from dataplane.guest.bench.procstat import process_cpu_s
from dataplane.guest.bench.results import RunMetrics, Summary, lat_from_hist
from dataplane.guest.bench.targets import BackendSettings, TargetSpec, endpoint
from dataplane.guest.bench.trace import KINDS
from dataplane.guest.bench.workload import Workload, split
from dataplane.guest.harness.processes import BackendProcess

TICK_S = 0.5


@dataclass
class BenchConfig:
    targets: list[TargetSpec]
    workload: Workload
    settings: BackendSettings
    repeat: int = 1
    event_idx: bool = True
    indirect: bool = True
    log_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    server_stats: ServerStats | None = None  # --layers: reads ours' stats (bench/layers.py)


class NullProgress:
    def start(self, label: str, round_no: int) -> None: ...
    def tick(self, ios: int, elapsed: float) -> None: ...
    def done(self, m: RunMetrics) -> None: ...


def run_bench(cfg: BenchConfig, progress=None) -> list[Summary]:
    """Run ``cfg.repeat`` rounds of every target; BenchError on the first failed run."""
    progress = progress or NullProgress()
    summaries = [Summary(t.label, t.kind) for t in cfg.targets]
    with tempfile.TemporaryDirectory(prefix="dp-bench-") as tmp:
        cfg.settings.scratch = Path(tmp)
        cfg.settings.log_dir = cfg.log_dir or Path(tmp)
        for r in range(1, cfg.repeat + 1):
            for i, spec in enumerate(cfg.targets):
                progress.start(spec.label, r)
                m = run_one(cfg, spec, r, f"r{r}t{i}-{spec.kind}", progress)
                summaries[i].rounds.append(m)
                progress.done(m)
    return summaries


def _watch(run: DriverRun, backend: BackendProcess | None, t0: float, progress) -> str | None:
    """Report progress until the driver ends; abort it if the backend process dies."""
    while run.alive():
        run.wait(TICK_S)
        progress.tick(run.ios(), time.monotonic() - t0)
        if backend is not None and backend.proc.poll() is not None:
            run.abort()
            tail = backend.log_text().strip().splitlines()[-1:] or [""]
            return f"exited with status {backend.proc.returncode} during the run: {tail[0]}"
    return None


def _join_quietly(run: DriverRun) -> None:
    try:
        run.join(10.0)
    except BenchError:
        pass


def _shape(cfg: BenchConfig, w: Workload) -> RingShape:
    return RingShape(
        w.num_queues, cfg.settings.queue_size, w.iodepth, w.buf_stride, cfg.event_idx, cfg.indirect
    )


def run_one(cfg: BenchConfig, spec: TargetSpec, round_no: int, name: str, progress) -> RunMetrics:
    if spec.kind == "fio":
        return run_fio(spec, cfg.settings, cfg.workload, round_no)
    if spec.kind == "limit":
        return _run_limit(cfg, spec, round_no, progress)
    w = cfg.workload
    with endpoint(spec, cfg.settings, name) as ep:
        conn = BenchConnection(ep.socket, _shape(cfg, w), dirty_log=spec.dirty_log)
        try:
            if not conn.indirect and 3 * w.iodepth > cfg.settings.queue_size:
                raise BenchError(
                    f"{spec.label} offers no indirect descriptors: --iodepth {w.iodepth} needs "
                    f"--queue-size {3 * w.iodepth} or more"
                )
            pid = ep.pid or conn.backend_pid
            read = cfg.server_stats if ep.mgmt is not None else None
            before = read_sums(read, ep.mgmt) if read is not None and ep.mgmt else None
            cpu0 = process_cpu_s(pid) if pid else None
            results = _drive(conn, conn.capacity, w, spec, ep.backend, progress)
            cpu1 = process_cpu_s(pid) if pid else None
            ios = sum(q.ios for q in results)
            device = read_settled(read, ep.mgmt, before, ios) if read and ep.mgmt else None
        finally:
            conn.close()
    backend_cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    m = _metrics(spec, round_no, results, backend_cpu)
    m.layer_sums = run_layer_sums([q.sums for q in results], m.ios, device)
    return m


def _run_limit(cfg: BenchConfig, spec: TargetSpec, round_no: int, progress) -> RunMetrics:
    """The same driver against the ideal device; its threads' CPU time is the backend's."""
    w = dataclasses.replace(cfg.workload, verify=False)  # it stores nothing to verify
    dev = LimitDevice(_shape(cfg, w), capacity_sectors=cfg.settings.capacity() // 512)
    try:
        results = _drive(dev, dev.capacity, w, spec, None, progress)
        dev.stop()
    finally:
        dev.close()
    m = _metrics(spec, round_no, results, dev.cpu_s())
    m.layer_sums = run_layer_sums([q.sums for q in results], m.ios, None)
    return m


def _drive(
    dev: RingDevice,
    capacity_sectors: int,
    w: Workload,
    spec: TargetSpec,
    backend: BackendProcess | None,
    progress,
) -> list[QueueResult]:
    """Run the workload's driver threads against ``dev`` to their end."""
    run = DriverRun(dev, split(w, capacity_sectors * 512), w)
    t0 = time.monotonic()
    run.start()
    try:
        died = _watch(run, backend, t0, progress)
    except BaseException:
        run.stop()
        _join_quietly(run)
        raise
    if died is not None:
        _join_quietly(run)
        raise BenchError(f"{spec.label} {died}")
    return run.join()


def _metrics(
    spec: TargetSpec, round_no: int, results: list[QueueResult], backend_cpu_s: float | None
) -> RunMetrics:
    for q in results:
        if q.error:
            raise BenchError(f"{spec.label}: queue {q.index}: {q.error}")
    merged = h.merge(q.hist for q in results)
    start = min(q.start_ns for q in results)
    end = max(q.end_ns for q in results)
    return RunMetrics(
        target=spec.label,
        kind=spec.kind,
        round=round_no,
        ios=sum(q.ios for q in results),
        ops={k: sum(q.ops[k] for q in results) for k in KINDS},
        bytes_read=sum(q.bytes_read for q in results),
        bytes_written=sum(q.bytes_written for q in results),
        wall_s=(end - start) / 1e9,
        lat_ns=lat_from_hist(merged),
        hist=merged,
        backend_cpu_s=backend_cpu_s,
        driver_cpu_s=sum(q.cpu_ns for q in results) / 1e9,
        kicks=sum(q.kicks for q in results),
        wakeups=sum(q.wakeups for q in results),
    )
