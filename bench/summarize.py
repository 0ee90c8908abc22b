#!/usr/bin/env python3
"""Markdown rows for bench/RESULTS.md from the JSON files that bench/roads.sh writes.

    bench/summarize.py OUTDIR [LABEL]

One row per target and file: IOPS, p50 latency, backend CPU-seconds per million requests,
and ours relative to qsd, to fio and to the limit target of the same run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Run as a script with any python3: the checkout's package (json_keys imports nothing else).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dataplane.json_keys import snake_keys  # noqa: E402


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def rows(path: Path, label: str) -> list[str]:
    # Schema 2 spells its keys in kebab-case, schema 1 in snake_case: read both as snake_case.
    doc = snake_keys(json.loads(path.read_text()))
    w = doc["workload"]
    by = {r["target"]: r for r in doc["results"]}
    out = []
    for r in doc["results"]:
        cpu = r.get("backend_cpu_s")
        per_m = cpu / r["ios"] * 1e6 if cpu and r["ios"] else None
        rel = {
            k: r["iops"] / by[k]["iops"] if k in by and by[k]["iops"] else None
            for k in ("qsd", "fio")
        }
        out.append(
            "| "
            + " | ".join(
                [
                    label,
                    path.stem.split("-")[0],
                    f"QD{w['iodepth']}",
                    w["notify"],
                    str(w["buf_align"]),
                    r["target"],
                    f"{r['iops']:,.0f}",
                    _num(r["lat_us"]["p50"], ".2f"),
                    _num(per_m, ".2f"),
                    _num(rel["qsd"], ".2f"),
                    _num(rel["fio"], ".2f"),
                    _num(r.get("of_limit"), ".2f"),
                ]
            )
            + " |"
        )
    return out


def main() -> None:
    outdir = Path(sys.argv[1])
    label = sys.argv[2] if len(sys.argv) > 2 else ""
    print(
        "| build | back end | QD | notify | buf-align | target | IOPS | p50 µs | CPU-s/M "
        "| × qsd | × fio | of limit |"
    )
    print("|---|---|---|---|--:|---|--:|--:|--:|--:|--:|--:|")
    for path in sorted(outdir.glob("*.json")):
        for line in rows(path, label):
            print(line)


if __name__ == "__main__":
    main()
