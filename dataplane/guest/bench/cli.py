"""``dataplane bench``: its arguments, their checks, and the run."""

from __future__ import annotations

import argparse
import os
import shlex
import stat
import sys
from pathlib import Path

from dataplane import argtypes
from dataplane.errors import UsageError
from dataplane.guest.bench.errors import BenchError
from dataplane.guest.bench.layers import ServerStats
from dataplane.guest.bench.layers_plot import panel_of, write_layers_plot
from dataplane.guest.bench.report import (
    Progress,
    check_plot_available,
    document,
    print_report,
    write_json,
    write_plot,
)
from dataplane.guest.bench.runner import BenchConfig, run_bench
from dataplane.guest.bench.targets import (
    BackendSettings,
    describe,
    parse_target,
    require_tool,
    with_dirty_log,
)
from dataplane.guest.bench.trace import read_trace
from dataplane.guest.bench.workload import (
    NOTIFY_MODES,
    PAGE,
    REPLAY_TIMINGS,
    RW_MODES,
    Workload,
)
from dataplane.guest.harness.processes import find_qsd
from dataplane.spec.choices import CACHE_MODES, ENGINE_NAMES
from dataplane.spec.ring import MAX_QUEUE_SIZE
from dataplane.spec.targets import check_target

MAX_QUEUES = 64
DEFAULT_RUNTIME_S = 5.0
DEFAULT_REPEAT = 3
HELP = "drive vhost-user-blk backends as a guest would, side by side with fio"
DESCRIPTION = (
    "The ring-replay benchmark: play QEMU and the guest against each --target in turn, and "
    "report IOPS, latency and CPU use (see bench/README.md)."
)
# The Workload fields that are the options of the same name.
WORKLOAD_OPTIONS = ("rw", "rwmixread", "bs", "iodepth", "num_queues", "ios", "offset", "size")
WORKLOAD_OPTIONS += ("verify", "seed", "replay_timing", "notify", "buf_align")
_size_arg = argtypes.size()


DIRTY_LOG_MODES = ("on", "both")


def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to the ``dataplane`` subparsers."""
    p = sub.add_parser("bench", help=HELP, description=DESCRIPTION)
    a = p.add_argument
    a("--target", action="append", metavar="TARGET",
      help="ours, qsd, fio, limit or socket:PATH; repeat to compare (default: ours)")  # fmt: skip
    a("--image", type=_image, metavar="FILE|URI",
      help="raw image for ours, qsd and fio (optional with --aio null), or a remote disk: "
      "nbd://HOST[:PORT]/EXPORT, nbd+unix:///EXPORT?socket=PATH, rbd:POOL/IMAGE (Ceph: "
      "$CEPH_CONF)")  # fmt: skip
    a("--aio", "--engine", dest="aio", choices=ENGINE_NAMES,
      default="io_uring", help="I/O engine of ours and qsd (default io_uring)")  # fmt: skip
    a("--cache", choices=CACHE_MODES, default="none",
      help="none: O_DIRECT (default); writeback: page cache (ours, qsd and fio alike)")  # fmt: skip
    a("--rw", choices=RW_MODES, default="randread", help="access pattern (default randread)")
    a(
        "--rwmixread",
        type=int,
        default=50,
        metavar="PCT",
        help="percent of reads for randrw (default 50)",
    )
    a(
        "--bs",
        type=_size_arg,
        default=4096,
        metavar="SIZE",
        help="block size, 512 to 1M, multiple of 512 (4k)",
    )
    positive = argtypes.positive
    a(
        "--iodepth",
        type=positive,
        default=1,
        metavar="N",
        help="requests in flight per queue (default 1)",
    )
    a(
        "--num-queues",
        type=positive,
        default=1,
        metavar="N",
        help="virtqueues, one driver thread each",
    )
    a("--queue-size", type=positive, default=256, metavar="N", help="virtqueue size (default 256)")
    limit = p.add_mutually_exclusive_group()
    limit.add_argument(
        "--runtime", type=argtypes.seconds(), metavar="S", help="seconds per run (default 5)"
    )
    limit.add_argument(
        "--ios", type=argtypes.positive, metavar="N", help="requests per run, over all queues"
    )
    a(
        "--offset",
        type=_size_arg,
        default=0,
        metavar="SIZE",
        help="start of the range used, in bytes (default 0)",
    )
    a(
        "--size",
        type=_size_arg,
        metavar="SIZE",
        help="length of the range used (default: to the end)",
    )
    a("--verify", action="store_true",
      help="stamp every written sector with its number and a checksum; check reads")  # fmt: skip
    a("--seed", type=int, default=1, metavar="N", help="random seed (default 1)")
    a("--notify", choices=NOTIFY_MODES, default="irq",
      help="irq: sleep on the call eventfd, as Linux's virtio-blk (default); poll: suppress "
      "interrupts and busy-poll the used ring, as a polling driver")  # fmt: skip
    a("--buf-align", type=_size_arg, default=PAGE, metavar="N",
      help="place data buffers at guest addresses aligned to N and no more, a power of two "
      "up to 4096 (default 4096; 2 makes O_DIRECT backends bounce)")  # fmt: skip
    a("--replay", type=Path, metavar="FILE", help="replay a trace (format: bench/README.md)")
    a("--replay-timing", choices=REPLAY_TIMINGS, default="fast",
      help="fast: as fast as --iodepth allows (default); original: the trace's times")  # fmt: skip
    a("--repeat", type=argtypes.positive, default=DEFAULT_REPEAT, metavar="N",
      help=f"rounds; targets interleave (default {DEFAULT_REPEAT}: one short run can flip "
      "which target wins)")  # fmt: skip
    a("--json", type=Path, metavar="FILE", help="write the results as JSON")
    a("--plot", type=Path, metavar="FILE.png", help="plot IOPS and latency (needs matplotlib)")
    a("--layers", type=Path, metavar="FILE.png",
      help="picture each target's round trip cut into its layers, kick to interrupt, beside "
      "the guest's end-to-end latency (ours: stamped inside; needs matplotlib)")  # fmt: skip
    a("--null-size", type=_size_arg, default=1 << 30, metavar="SIZE",
      help="device size with --aio null and no --image (default 1G)")  # fmt: skip
    a("--ours-arg", action="append", default=[], metavar="ARG",
      help="extra argument for 'dataplane serve', e.g. --ours-arg=--read-only")  # fmt: skip
    a("--ours-cmd", metavar="CMD",
      help="another dataplane build to run as ours (CMD serve ...)")  # fmt: skip
    a("--log-dir", type=Path, metavar="DIR", help="keep the backends' logs here")
    a("--no-event-idx", action="store_true", help="do not negotiate VIRTIO_RING_F_EVENT_IDX")
    a("--no-indirect", action="store_true", help="do not negotiate VIRTIO_RING_F_INDIRECT_DESC")
    a("--dirty-log", nargs="?", const="on", choices=DIRTY_LOG_MODES,
      help="play a migrating QEMU: share a dirty log (SET_LOG_BASE) and turn LOG_ALL on; "
      "'both' runs each vhost-user target without and with it, side by side")  # fmt: skip
    return p


def _image(text: str) -> Path | str:
    try:
        target = check_target(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return Path(text) if target is None else target


def _check_image(path: Path | str) -> None:
    if isinstance(path, str):
        return  # a remote disk: checked when its size is asked for (TargetUnavailable)
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(f"--image {path}: {e.strerror}") from None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise UsageError(f"--image {path} is not a regular file or block device")
    if stat.S_ISREG(st.st_mode) and (st.st_size == 0 or st.st_size % 512):
        raise UsageError(f"--image {path} size {st.st_size} is not a non-zero multiple of 512")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Check every argument before anything starts; UsageError names the first bad one."""
    targets = with_dirty_log([parse_target(t) for t in (args.target or ["ours"])], args.dirty_log)
    kinds = {t.kind for t in targets}
    if args.num_queues > MAX_QUEUES:
        raise UsageError(f"--num-queues {args.num_queues} is above the maximum of {MAX_QUEUES}")
    qs = args.queue_size
    if qs < 2 or qs > MAX_QUEUE_SIZE or qs & (qs - 1):
        raise UsageError(f"--queue-size {qs} must be a power of two from 2 to {MAX_QUEUE_SIZE}")
    need_descs = args.iodepth * (3 if args.no_indirect else 1)
    if need_descs > qs or args.iodepth > 1024:
        raise UsageError(
            f"--iodepth {args.iodepth} does not fit --queue-size {qs}"
            + (" (3 descriptors per request with --no-indirect)" if args.no_indirect else "")
        )
    replay = read_trace(args.replay) if args.replay is not None else None
    runtime = args.runtime
    if runtime is None and args.ios is None and replay is None:
        runtime = DEFAULT_RUNTIME_S
    options = {f: getattr(args, f) for f in WORKLOAD_OPTIONS}
    w = Workload(**options, runtime_s=runtime, replay=replay)
    w.check()
    null = args.aio == "null"
    if args.image is not None:
        _check_image(args.image)
    elif not null and kinds & {"ours", "qsd", "fio"}:
        raise UsageError("--image is required for the ours, qsd and fio targets (or --aio null)")
    notes = []
    if "qsd" in kinds:
        find_qsd()
        if args.aio == "native" and args.cache != "none":
            raise UsageError("qsd: --aio native needs --cache none (QEMU requires O_DIRECT)")
    if "fio" in kinds:
        require_tool("fio", "fio")
        if replay is not None:
            raise UsageError("the fio target cannot --replay a trace: drop --target fio")
        if args.verify:
            notes.append("note: --verify checks the vhost-user targets only; fio runs unverified")
    if args.verify and "limit" in kinds:
        notes.append("note: the limit target stores no data; it runs unverified")
    if args.verify and null and kinds & {"ours", "qsd"}:
        raise UsageError("--verify needs a real image: the null engine discards writes")
    if args.json is not None and not args.json.parent.is_dir():
        raise UsageError(f"--json {args.json}: directory {args.json.parent} does not exist")
    for opt, path in (("--plot", args.plot), ("--layers", args.layers)):
        if path is not None:
            check_plot_available()
            if not path.parent.is_dir():
                raise UsageError(f"{opt} {path}: directory {path.parent} does not exist")
    if args.log_dir is not None and not args.log_dir.is_dir():
        raise UsageError(f"--log-dir {args.log_dir} is not a directory")
    settings = BackendSettings(
        image=args.image,
        aio=args.aio,
        cache=args.cache,
        num_queues=args.num_queues,
        queue_size=qs,
        null_size=args.null_size,
        ours_args=tuple(args.ours_arg),
        ours_cmd=tuple(shlex.split(args.ours_cmd)) if args.ours_cmd else None,
        mgmt=args.layers is not None,
    )
    if null and args.image is None and (args.null_size % 512 or args.null_size == 0):
        raise UsageError("--null-size must be a non-zero multiple of 512")
    if replay is None and kinds - {"socket"}:
        w.byte_range(settings.capacity())
    return BenchConfig(
        targets=targets,
        workload=w,
        settings=settings,
        repeat=args.repeat,
        event_idx=not args.no_event_idx,
        indirect=not args.no_indirect,
        log_dir=args.log_dir,
        notes=notes,
    )


def _workload_json(w: Workload, replay: Path | None) -> dict:
    out = {f: getattr(w, f) for f in WORKLOAD_OPTIONS if f != "seed"}
    out |= {"rwmixread": w.read_percent, "runtime_s": w.runtime_s}
    return out | {"replay": str(replay) if replay is not None else None}


def _header(cfg: BenchConfig) -> str:
    """The workload, then each target as it is (a socket target as what answers there)."""
    rounds = f"{cfg.repeat} rounds, targets interleaved" if cfg.repeat > 1 else "1 round"
    lines = [f"dataplane bench: {cfg.workload.describe()}; {rounds}"]
    lines += [f"  {describe(t, cfg.settings)}" for t in cfg.targets]
    return "\n".join(lines)


def layers_title(cfg: BenchConfig) -> str:
    """The picture's name for this run's engine, cache and workload."""
    s = cfg.settings
    if s.null:
        where = "null engine"
    elif s.remote:
        where = str(s.image)
    else:
        where = f"{s.aio}, " + ("page cache" if s.cache == "writeback" else "O_DIRECT")
    return f"{where}: {cfg.workload.describe()}"


def main(args: argparse.Namespace, server_stats: ServerStats | None = None) -> int:
    """Run ``dataplane bench``; UsageError propagates (exit 2), a failed run returns 1.

    ``server_stats`` reads the stats of ours' management socket, for ``--layers``."""
    cfg = config_from_args(args)
    cfg.server_stats = server_stats
    for note in cfg.notes:
        print(f"dataplane: {note}", file=sys.stderr)
    progress = Progress(sys.stderr, cfg.repeat * len(cfg.targets), cfg.workload.runtime_s)
    try:
        summaries = run_bench(cfg, progress)
    except BenchError as e:
        print(f"\ndataplane: error: {e}" if progress.tty else f"dataplane: error: {e}",
              file=sys.stderr)  # fmt: skip
        return 1
    header = _header(cfg)
    print_report(summaries, header)
    meta = {
        "command": shlex.join(["dataplane", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else None,
        "workload": _workload_json(cfg.workload, args.replay),
        "image": str(cfg.settings.image) if cfg.settings.image is not None else None,
        "aio": cfg.settings.aio,
        "cache": cfg.settings.cache,
        "repeat": cfg.repeat,
        "description": header,
        "layers_title": layers_title(cfg),
    }
    if args.json is not None:
        write_json(args.json, document(summaries, meta))
        print(f"dataplane: results written to {args.json}", file=sys.stderr)
    if args.plot is not None:
        write_plot(args.plot, summaries, header)
        print(f"dataplane: plot written to {args.plot}", file=sys.stderr)
    if args.layers is not None:
        for s in summaries:
            sums = s.total.layer_sums
            if s.kind == "ours" and sums is not None and "kick_to_pop" not in sums:
                print(f"dataplane: note: {s.target} gave no layer stats in some round (its "
                      "--mgmt socket did not answer with them): its guest-side total only",
                      file=sys.stderr)  # fmt: skip
        write_layers_plot(args.layers, [panel_of(layers_title(cfg), summaries)])
        print(f"dataplane: layers written to {args.layers}", file=sys.stderr)
    return 0
