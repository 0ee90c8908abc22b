"""What a person reads: the progress line, the fio-like table, the JSON file and the plot."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TextIO

from dataplane import __version__
from dataplane.errors import UsageError
from dataplane.guest.bench.results import RunMetrics, Summary, limit_iops, ratios
from dataplane.guest.bench.targets import PACKAGE_ROOT
from dataplane.json_keys import kebab_keys

SCHEMA = "dataplane-bench/2"  # 2: keys in kebab-case (json_keys.py); 1: snake_case


class Progress:
    """One status line on stderr: rewritten in place on a terminal, one line per run otherwise."""

    def __init__(self, stream: TextIO, total_runs: int, expected_s: float | None) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.total = total_runs
        self.expected_s = expected_s
        self.n = 0
        self.label = ""

    def start(self, label: str, round_no: int) -> None:
        self.n += 1
        self.label = f"[{self.n}/{self.total}] round {round_no} {label}"
        if self.tty:
            self._write(f"{self.label}: starting")

    def tick(self, ios: int, elapsed: float) -> None:
        if not self.tty:
            return
        of = f"/{self.expected_s:g}" if self.expected_s else ""
        rate = ios / elapsed if elapsed else 0
        self._write(f"{self.label}: {elapsed:.1f}{of} s, {ios} ios, {_count(rate)} IOPS")

    def done(self, m: RunMetrics) -> None:
        p50 = m.lat_ns.get("p50")
        lat = f", p50 {p50 / 1000:.1f} \u00b5s" if p50 is not None else ""
        line = f"{self.label}: {_count(m.iops)} IOPS{lat}"
        if self.tty:
            self._write(line)
            self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _write(self, text: str) -> None:
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()


def _count(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


COLUMNS = (
    ("target", "<"),
    ("IOPS", ">"),
    ("MiB/s", ">"),
    ("p50 us", ">"),
    ("p99 us", ">"),
    ("p99.9 us", ">"),
    ("be CPU%", ">"),
    ("IOPS/be-CPU-s", ">"),
    ("drv CPU%", ">"),
    ("xIOPS", ">"),
    ("xp50", ">"),
    ("xp99", ">"),
    ("of limit", ">"),
)


LEGEND = (
    "be CPU%: the backend process's CPU time over the run (100 = one core); "
    "IOPS/be-CPU-s: IOPS per backend CPU-second; drv CPU%: the bench driver's (the guest's) "
    "CPU; xIOPS, xp50, xp99: this target's IOPS, p50 and p99 divided by the first target's "
    "(xIOPS above 1: more IOPS; xp50, xp99 below 1: lower latency)"
)
LIMIT_LEGEND = (
    "; of limit: this target's IOPS as a fraction of the limit target's in the same run (1: as "
    "fast as the ring allows)"
)


def legend(width: int = 100, *, of_limit: bool = True) -> str:
    """The legend under the table, wrapped (``of_limit``: with the column of a limit target)."""
    text = LEGEND + (LIMIT_LEGEND if of_limit else "")
    return textwrap.fill(text, width, initial_indent="legend: ", subsequent_indent="  ")


def table(summaries: list[Summary]) -> str:
    """The fio-like table, ratios against the first target."""
    base = summaries[0].total if summaries else None
    limit = limit_iops(summaries)
    rows = []
    for s in summaries:
        t = s.total
        d = t.to_json()
        r = ratios(t, base) if base is not None else {}
        lat = d["lat_us"]
        rows.append(
            (
                s.target,
                _num(t.iops, ".0f"),
                _num(t.bw_mib_s, ".1f"),
                _num(lat["p50"], ".1f"),
                _num(lat["p99"], ".1f"),
                _num(lat["p999"], ".1f"),
                _num(d["backend_cpu_pct"], ".0f"),
                _num(d["iops_per_backend_cpu_s"], ".0f"),
                _num(d["driver_cpu_pct"], ".0f"),
                _num(r.get("iops"), ".2f"),
                _num(r.get("lat_p50"), ".2f"),
                _num(r.get("lat_p99"), ".2f"),
                _num(t.iops / limit if limit else None, ".2f"),
            )
        )
    columns = COLUMNS if limit else COLUMNS[:-1]  # "of limit" only beside a limit target
    rows = [row[: len(columns)] for row in rows]
    widths = [max(len(c[0]), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    aligns = [c[1] for c in columns]
    lines = []
    for cells in [tuple(c[0] for c in columns), *rows]:
        parts = (f"{c:{a}{w}}" for c, a, w in zip(cells, aligns, widths, strict=True))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def git_commit() -> str | None:
    """The checkout's commit (with "-dirty" for local changes), if dataplane runs from one."""
    try:
        head = subprocess.run(
            ["git", "-C", str(PACKAGE_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(PACKAGE_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "") if head else None


def document(summaries: list[Summary], meta: dict) -> dict:
    """The --json document (schema in bench/README.md)."""
    first = summaries[0] if summaries else None
    return {
        "schema": SCHEMA,
        "dataplane_version": __version__,
        "git_commit": git_commit(),
        "host": {"cpus": os.cpu_count(), "kernel": platform.release()},
        **meta,
        "results": [s.to_json(first, limit_iops(summaries)) for s in summaries],
    }


def write_json(path: Path, doc: dict) -> None:
    try:
        path.write_text(json.dumps(kebab_keys(doc), indent=2) + "\n")
    except OSError as e:
        raise UsageError(f"cannot write --json {path}: {e.strerror}") from None


def check_plot_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib: pip install 'dataplane[plot]' (or pip install matplotlib)"
        ) from None


def pyplot():
    """matplotlib's pyplot, drawing to files (Agg), its chatter at WARNING."""
    import logging

    import matplotlib

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, option: str) -> None:
    """Write ``fig`` to ``path`` and close it; UsageError names ``option`` if it cannot."""
    try:
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise UsageError(f"cannot write {option} {path}: {e.strerror}") from None
    finally:
        pyplot().close(fig)


def write_plot(path: Path, summaries: list[Summary], title: str) -> None:
    """IOPS and latency percentiles per target, side by side."""
    plt = pyplot()
    labels = [s.target for s in summaries]
    totals = [s.total for s in summaries]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5))
    bars = ax1.bar(labels, [t.iops for t in totals], color="tab:blue")
    ax1.bar_label(bars, labels=[_count(t.iops) for t in totals], padding=2)
    ax1.ticklabel_format(axis="y", style="plain", useOffset=False)
    ax1.margins(y=0.12)
    ax1.set_title("IOPS")
    ax1.set_ylabel("IOPS")
    width = 0.27
    for k, (key, name) in enumerate((("p50", "p50"), ("p99", "p99"), ("p999", "p99.9"))):
        xs = [i + (k - 1) * width for i in range(len(labels))]
        ys = [(t.lat_ns.get(key) or 0) / 1000 for t in totals]
        bars = ax2.bar(xs, [y or None for y in ys], width, label=name)
        ax2.bar_label(bars, labels=[f"{y:.0f}" if y >= 10 else f"{y:.1f}" for y in ys],
                      fontsize=7, padding=1)  # fmt: skip
    ax2.set_xticks(range(len(labels)), labels)
    ax2.set_yscale("log")
    ax2.margins(y=0.15)
    ax2.set_title("latency (\u00b5s, log scale)")
    ax2.set_ylabel("\u00b5s")
    ax2.legend()
    fig.suptitle(title, fontsize=8, ha="left", x=0.01)
    fig.tight_layout()
    save_figure(fig, path, "--plot")


def print_report(summaries: list[Summary], header: str, out: TextIO = sys.stdout) -> None:
    of_limit = bool(limit_iops(summaries))
    out.write(header + "\n" + table(summaries) + "\n" + legend(of_limit=of_limit) + "\n")
    out.flush()
