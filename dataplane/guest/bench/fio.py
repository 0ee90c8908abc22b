"""The bare-metal figure: fio's io_uring engine directly on the same image.

fio runs the same workload (numjobs = --num-queues) with ``--output-format=json``;
its CPU use comes from the kernel's accounting of the child (getrusage), so it
is measured the same way for every target.  With ``--aio null`` fio runs its
own null engine: the cost of fio's submission loop alone.
"""

from __future__ import annotations

import json
import resource
import subprocess

from dataplane.guest.bench import remote
from dataplane.guest.bench.errors import BenchError
from dataplane.guest.bench.results import RunMetrics
from dataplane.guest.bench.targets import BackendSettings, TargetSpec, require_tool
from dataplane.guest.bench.trace import KINDS
from dataplane.guest.bench.workload import Workload

_PERCENTILES = {"p50": "50.000000", "p99": "99.000000", "p999": "99.900000"}


def fio_argv(fio: str, s: BackendSettings, w: Workload) -> list[str]:
    n = w.num_queues
    offset, size = w.byte_range(s.capacity())
    argv = [
        fio,
        "--name=dataplane-bench",
        f"--rw={w.rw}",
        f"--bs={w.bs}",
        f"--iodepth={w.iodepth}",
        f"--numjobs={n}",
        "--thread",
        "--group_reporting",
        "--norandommap",
        f"--randseed={w.seed}",
        "--output-format=json",
        "--unified_rw_reporting=both",
        "--lat_percentiles=1",
        "--percentile_list=50:99:99.9",
    ]
    if w.rw == "randrw":
        argv.append(f"--rwmixread={w.rwmixread}")
    if not w.random and n > 1:  # one slice per job, as the driver does per queue
        size = size // n // w.bs * w.bs
        argv.append(f"--offset_increment={size}")
    argv += [f"--offset={offset}", f"--size={size}"]
    if s.null:
        argv.append("--ioengine=null")
    elif isinstance(s.image, str):
        argv += remote.fio_engine(s.image)
    else:
        argv += [
            "--ioengine=io_uring",
            f"--filename={s.image}",
            f"--direct={1 if s.cache == 'none' else 0}",
            # fio drops the file's page cache before a job by default; the backends
            # measured beside it do not, so with --cache writeback fio would read a cold file.
            "--invalidate=0",
        ]
    if w.ios is not None:
        per_job = -(-w.ios // n)
        argv.append(f"--io_size={per_job * w.bs}")
    else:
        assert w.runtime_s is not None
        argv += ["--time_based", f"--runtime={max(1, round(w.runtime_s * 1000))}ms"]
    return argv


def parse_fio(data: dict, target: str, round_no: int, cpu_s: float | None) -> RunMetrics:
    try:
        job = data["jobs"][0]
        mixed = job["mixed"]
        wall_s = mixed["runtime"] / 1000
        pct = mixed["lat_ns"].get("percentile", {})
        lat = {k: float(pct[v]) if v in pct else None for k, v in _PERCENTILES.items()}
        lat["mean"] = float(mixed["lat_ns"]["mean"])
        lat["max"] = float(mixed["lat_ns"]["max"])
        ops = dict.fromkeys(KINDS, 0)
        ops["read"] = job["read"]["total_ios"]
        ops["write"] = job["write"]["total_ios"]
        return RunMetrics(
            target=target,
            kind="fio",
            round=round_no,
            ios=mixed["total_ios"],
            ops=ops,
            bytes_read=job["read"]["io_bytes"],
            bytes_written=job["write"]["io_bytes"],
            wall_s=wall_s,
            lat_ns=lat,
            backend_cpu_s=cpu_s,
        )
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise BenchError(f"cannot read fio's JSON output (missing {e})") from None


def run_fio(spec: TargetSpec, s: BackendSettings, w: Workload, round_no: int) -> RunMetrics:
    argv = fio_argv(require_tool("fio", "fio"), s, w)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    timeout = (w.runtime_s or 0) + 120 if w.ios is None else None
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"fio did not finish within {timeout:.0f} s") from None
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchError(f"fio failed with status {proc.returncode}: {last}")
    try:
        data = json.loads(proc.stdout[proc.stdout.index("{") :])
    except ValueError:
        raise BenchError("fio printed no JSON") from None
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return parse_fio(data, spec.label, round_no, cpu)
