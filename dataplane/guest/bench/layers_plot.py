"""The picture of ``dataplane bench --layers FILE.png``: where a request's round trip goes.

One panel per workload, one stacked bar per target: the layers of
dataplane/spec/latency.py ``GUEST_LAYERS`` from the guest's publish and kick to its
reap of the interrupt, each as its mean per request, and beside it the guest's
end-to-end mean as the bench driver measured it (with its p50 and p99).  A target
whose inside is not stamped (qemu-storage-daemon, a socket, the ideal device) has its
guest-side total only.

``python -m dataplane.guest.bench.layers_plot OUT.png RUN.json...`` draws one picture of
several ``dataplane bench --layers ... --json RUN.json`` runs, a panel per file (the
picture in docs/lifecycle.md).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dataplane.errors import UsageError
from dataplane.guest.bench.layers import ROUND_TRIP, layer_means
from dataplane.guest.bench.report import pyplot, save_figure
from dataplane.guest.bench.results import Summary
from dataplane.json_keys import snake_keys
from dataplane.spec.latency import GUEST_LAYERS

NAMES = {
    "guest_publish": "guest: fill the batch, publish avail->idx",
    "kick_to_pop": "kick -> pop (eventfd, wake-up, pass start)",
    "pop_submit": "pop -> submit (parse, batch)",
    "submit_complete": "submit -> complete (host I/O)",
    "complete_used": "complete -> used->idx published",
    "used_notify": "used -> notify (call eventfd)",
    "notify_reap": "notify -> guest reap (interrupt, wake-up)",
}
COLORS = ("#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


@dataclass
class Bar:
    label: str
    means: dict[str, float] | None  # ns per request: ROUND_TRIP and the layers measured
    p50_ns: float | None
    p99_ns: float | None


@dataclass
class Panel:
    title: str
    bars: list[Bar]


def panel_of(title: str, summaries: Sequence[Summary]) -> Panel:
    """A workload's panel from this run's summaries (targets without a driver are left out)."""
    bars = []
    for s in summaries:
        t = s.total
        if t.layer_sums is None:
            continue  # fio: no driver of ours, no round trip to cut
        bars.append(Bar(s.target, layer_means(t.layer_sums), t.lat_ns.get("p50"),
                        t.lat_ns.get("p99")))  # fmt: skip
    return Panel(title, bars)


def panel_of_json(path: Path) -> Panel:
    """A panel from a ``dataplane bench --json`` document."""
    try:
        doc = snake_keys(json.loads(path.read_text()))  # written kebab-case
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot read a bench --json document: {e}") from None
    bars = []
    for r in doc.get("results", []):
        sums = r.get("layer_sums_ns")
        if sums is None:
            continue
        lat = r.get("lat_us", {})
        bars.append(Bar(r["target"], layer_means(sums), _ns(lat.get("p50")), _ns(lat.get("p99"))))
    return Panel(doc.get("layers_title") or doc.get("description", str(path)), bars)


def _ns(us: float | None) -> float | None:
    return us * 1000 if us is not None else None


def write_layers_plot(path: Path, panels: Sequence[Panel]) -> None:
    """Draw ``panels`` into the PNG ``path`` (UsageError if it cannot be written)."""
    plt = pyplot()
    from matplotlib.patches import Patch

    rows = [len(p.bars) * 2 for p in panels]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(12, 1.2 + 0.45 * sum(rows) + 0.6 * len(panels)),
        gridspec_kw={"height_ratios": [max(r, 1) for r in rows]}, squeeze=False,
    )  # fmt: skip
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        _draw_panel(ax, panel)
    handles = [Patch(color=c, label=NAMES[n]) for n, c in zip(GUEST_LAYERS, COLORS, strict=True)]
    inside = "guest-side total (the backend's inside is not stamped)"
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label=inside))
    handles.append(Patch(color="black", label="guest end-to-end mean (bench driver)"))
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.9 / fig.get_size_inches()[1]))
    save_figure(fig, path, "--layers")


def _draw_panel(ax, panel: Panel) -> None:
    labels = []
    y = 0
    top = 1.0
    for bar in reversed(panel.bars):
        m = bar.means or {}
        e2e = m.get(ROUND_TRIP, 0) / 1000
        top = max(top, e2e)
        # The guest's end-to-end mean, thin, under its breakdown.
        ax.barh(y, e2e, height=0.35, color="black")
        note = f"{e2e:.1f} \u00b5s mean"
        if bar.p50_ns is not None and bar.p99_ns is not None:
            note += f", p50 {bar.p50_ns / 1000:.1f}, p99 {bar.p99_ns / 1000:.1f}"
        ax.text(e2e, y, "  " + note, va="center", fontsize=7)
        labels.append((y, f"{bar.label}: end-to-end"))
        y += 1
        if all(n in m for n in GUEST_LAYERS):
            left = 0.0
            for name, color in zip(GUEST_LAYERS, COLORS, strict=True):
                w = max(m[name], 0) / 1000  # a mean below 0 (a few ns of clock skew): 0 wide
                ax.barh(y, w, left=left, height=0.7, color=color)
                left += w
        else:
            ax.barh(y, e2e, height=0.7, facecolor="white", edgecolor="black", hatch="//")
        labels.append((y, f"{bar.label}: layers"))
        y += 1
    ax.set_yticks([p for p, _ in labels], [t for _, t in labels], fontsize=8)
    ax.set_xlim(0, top * 1.45)
    ax.set_xlabel("\u00b5s per request (mean)", fontsize=8)
    ax.set_title(panel.title, fontsize=9, loc="left")
    ax.tick_params(axis="x", labelsize=7)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(
            "usage: python -m dataplane.guest.bench.layers_plot OUT.png RUN.json...",
            file=sys.stderr,
        )
        return 2
    out, files = Path(argv[0]), [Path(a) for a in argv[1:]]
    try:
        write_layers_plot(out, [panel_of_json(f) for f in files])
    except UsageError as e:
        print(f"dataplane: error: {e}", file=sys.stderr)
        return 2
    print(f"dataplane: layers written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
