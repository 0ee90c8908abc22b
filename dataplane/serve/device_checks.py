"""The checks of a whole device, once every key's value is read: ranges, and the keys that
depend on one another (which keys an image's kind and a datapath take is the key table's
check, device_keys.check_given).

``--device``, ``--config``, ``add-device`` and the serve flags all end here, so a
mistake reads the same wherever it was made (each one line: a UsageError).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dataplane.device.settings import MIN_BLOCK, Limits, check_queue_size
from dataplane.errors import UsageError
from dataplane.serve.activation import InheritedSocket
from dataplane.serve.device_options import KIND_TEXT, MAX_QUEUES, DeviceOptions
from dataplane.serve.key_values import format_cpus
from dataplane.serve.socket_access import MAX_SOCKET_PATH
from dataplane.spec.targets import image_kind

MAX_POLL_US = 1_000_000
MAX_BOUNCE_MIB = 1 << 16
MAX_SERIAL_BYTES = 20
NAME_RE = re.compile(r"[A-Za-z0-9_.+-]{1,32}")

__all__ = ["MAX_POLL_US", "check_options"]


def check_options(
    opts: DeviceOptions, where: str, *, flags: bool, limits: Mapping[str, Any]
) -> None:
    """Every per-device check; ``flags``: name the single-device flags (``--num-queues 65``).

    ``limits``: the limit keys given (``{"iops-limit": N}``), checked and set as
    ``opts.limits``.
    """

    def name(key: str, value: object) -> str:
        return f"--{key} {value}" if flags else f"{where}: {key}={value}"

    def fail(message: str) -> None:
        raise UsageError(message)

    kind = image_kind(opts.image)
    if opts.num_queues < 1:
        fail(f"{name('num-queues', opts.num_queues)} must be positive")
    if opts.num_queues > MAX_QUEUES:
        fail(f"{name('num-queues', opts.num_queues)} is above the maximum of {MAX_QUEUES}")
    if not check_queue_size(opts.queue_size):
        fail(f"{name('queue-size', opts.queue_size)} must be a power of two from 2 to 32768")
    if opts.serial is not None and len(opts.serial.encode()) > MAX_SERIAL_BYTES:
        fail(f"{name('serial', repr(opts.serial))} is longer than the 20 bytes virtio-blk allows")
    if opts.poll_us is not None and not 0 <= opts.poll_us <= MAX_POLL_US:
        fail(f"{name('poll-us', opts.poll_us)} is not from 0 to {MAX_POLL_US}")
    # Every request the config space allows (seg_max segments of at least 4 KiB) must fit.
    least = -(-(opts.queue_size - 2) * MIN_BLOCK // (1 << 20))
    if not least <= opts.bounce_mib <= MAX_BOUNCE_MIB:
        fail(
            f"{name('bounce-mib', opts.bounce_mib)} is not from {least} to {MAX_BOUNCE_MIB}"
            f" (queue-size {opts.queue_size} needs at least {least} MiB)"
        )
    try:
        opts.limits = Limits.from_keys({**opts.limits.keys(), **limits})
    except ValueError as e:
        fail(f"--{e}".replace("=", " ", 1) if flags else f"{where}: {e}")
    if opts.iothreads < 1:
        fail(f"{name('iothreads', opts.iothreads)} must be positive")
    if opts.iothreads > opts.num_queues:
        fail(
            f"{name('iothreads', opts.iothreads)} is more than the {opts.num_queues} queue(s): "
            "a thread serves whole queues"
        )
    if opts.cpus:
        allowed = os.sched_getaffinity(0)
        for cpu in opts.cpus:
            if cpu not in allowed:
                fail(
                    f"{name('cpus', format_cpus(opts.cpus))}: CPU {cpu} is not in this "
                    f"process's CPU affinity ({format_cpus(sorted(allowed))})"
                )
    if opts.name and not NAME_RE.fullmatch(opts.name):
        fail(f"{name('name', repr(opts.name))} must be 1 to 32 of A-Z a-z 0-9 _ . + -")
    if isinstance(opts.socket, InheritedSocket) and opts.socket_access():
        fail(
            f"{where}: socket-mode, socket-owner and socket-group apply to a socket path, not "
            f"socket={opts.socket}: set them where that socket is made (SocketMode=, "
            "SocketUser=, SocketGroup= in a systemd .socket unit)"
        )
    if isinstance(opts.socket, Path) and len(os.fsencode(opts.socket)) > MAX_SOCKET_PATH:
        fail(
            f"{name('socket', opts.socket)}: the path is {len(os.fsencode(opts.socket))} bytes "
            f"and a UNIX socket path holds at most {MAX_SOCKET_PATH}: choose a shorter one"
        )
    if kind != "file" and opts.datapath != "native":
        fail(
            f"{name('datapath', opts.datapath)}: {KIND_TEXT[kind]} is served by the native "
            "datapath only (its engine is C)"
        )
