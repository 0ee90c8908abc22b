"""The ``dataplane serve`` process: its devices (``DeviceSet``), the management socket,
``/metrics``, systemd's socket activation and readiness, and the sandbox, from start-up to
the signal that stops it.

Start-up claims every path first (device sockets bound, images opened and locked, the
management socket bound), then starts the devices: a path that is taken stops it before any
device runs.  The process confines itself once everything is open.  Shutdown (SIGINT,
SIGTERM) finishes the in-flight I/O of every device.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from dataplane.device.blkdev import confine_process
from dataplane.serve.activation import notify, unclaimed_sockets
from dataplane.serve.config import ServeConfig
from dataplane.serve.devices import DeviceSet, describe_line, open_images
from dataplane.serve.metrics import MetricsServer
from dataplane.serve.mgmt import MgmtServer, metrics_snapshot
from dataplane.serve.server import DeviceServer, finish

__all__ = ["serve"]


async def serve(cfg: ServeConfig, log: logging.Logger) -> None:
    """Serve ``cfg``'s devices (and its management socket and /metrics) until SIGINT or
    SIGTERM; UsageError (nothing left running) if one cannot start."""
    loop = asyncio.get_running_loop()
    # The handlers go in before anything serves: a client that saw a socket answer may
    # signal at once, and a SIGTERM that arrives while start-up still confines the threads
    # must stop the process as any other (start-up finishes, then the devices drain).
    stop = loop.create_future()

    def on_signal(signum: int) -> None:
        if not stop.done():
            stop.set_result(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    devices = DeviceSet(log, DeviceServer)
    mgmt = MgmtServer(cfg.mgmt, devices, log) if cfg.mgmt is not None else None
    metrics = None
    if cfg.metrics is not None:
        metrics = MetricsServer(*cfg.metrics, loop, lambda: metrics_snapshot(devices))
    claimed = []
    try:
        if metrics is not None:
            metrics.start()  # first: a taken port is a usage error before any device starts
        # Every path first (sockets bound, images opened and locked), then the devices:
        # a path that is taken stops start-up before any device runs.
        for opts in cfg.devices:
            claimed.append(devices.claim(opts))
        if mgmt is not None:
            mgmt.claim()
        images = await open_images([opts for opts, _ in claimed])
        for i, ((opts, bound), image) in enumerate(zip(claimed, images, strict=True)):
            try:
                await devices.start(opts, bound, image)
            except BaseException:
                for img in images[i + 1 :]:
                    if img is not None:
                        img.close()
                raise
        if mgmt is not None:
            await mgmt.start()
        await _confine(cfg, devices, log)
    except BaseException:
        for _, bound in claimed:
            bound.close()  # only sockets this process bound, and idempotent
        if metrics is not None:
            metrics.close()
        if mgmt is not None:
            await mgmt.close()
        await devices.close()
        raise
    for served in devices:
        log.info("%s", describe_line(served))
    if mgmt is not None:
        log.info("management socket listening on %s", cfg.mgmt)
    if metrics is not None:
        log.info("metrics served on http://%s:%d/metrics", metrics.addr, metrics.port)
    for unused in unclaimed_sockets(d.socket for d in cfg.devices):
        log.warning("inherited socket %s matches no device; not serving it", unused.describe())
    notify("READY=1", f"STATUS=serving {len(cfg.devices)} device(s)")
    try:
        await stop  # no connection and no device can end this: only a signal
    finally:
        notify("STOPPING=1", "STATUS=stopping: finishing in-flight I/O")
        if metrics is not None:
            metrics.close()
        if mgmt is not None:
            await finish(mgmt.close())
        await finish(devices.close())
    log.info("stopped on %s", signal.Signals(stop.result()).name)


async def _confine(cfg: ServeConfig, devices: DeviceSet, log: logging.Logger) -> None:
    """Another user and the allow-lists, now that every socket is bound and image open."""
    confine_process(cfg.sandbox or "off", cfg.user)
    for served in devices:  # threads started from here on load their own list at start
        await asyncio.wrap_future(served.device.confine())
    if cfg.user is not None:
        log.info("running as %s (uid %d, gid %d)", cfg.user, os.getuid(), os.getgid())
    if cfg.sandbox not in (None, "off"):
        log.info("sandbox %s: seccomp allow-lists loaded", cfg.sandbox)
