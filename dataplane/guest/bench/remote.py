"""Bench targets on a remote disk: ``--image nbd://...``, ``nbd+unix://...`` or ``rbd:...``.

The same export three ways: ``ours`` serves it with its NBD or RBD engine; ``qsd`` with
QEMU's own block driver for it (``--blockdev driver=nbd,...`` or ``driver=rbd,...``);
``fio`` with its own client engine (``--ioengine=nbd``: the client-side limit for NBD;
``--ioengine=rbd`` on librbd).  Ceph's options come from the environment, as every
librados client reads them: ``CEPH_CONF`` names the ceph.conf (with its keyring), and
the client is ``admin``.
"""

from __future__ import annotations

import json
import os
import subprocess
from urllib.parse import parse_qs, unquote, urlsplit

from dataplane.errors import TargetUnavailable, UsageError
from dataplane.spec.targets import image_kind, parse_rbd_spec

NBD_PORT = 10809
CEPH_CONF_ENV = "CEPH_CONF"


def is_remote(image: object) -> bool:
    return isinstance(image, str) and image_kind(image) != "file"


def capacity(image: str) -> int:
    """The remote disk's size in bytes, as ``qemu-img info`` finds it (TargetUnavailable if not)."""
    name = image
    if image_kind(image) == "rbd" and os.environ.get(CEPH_CONF_ENV):
        name = f"{image}:conf={os.environ[CEPH_CONF_ENV]}"
    try:
        out = subprocess.run(
            ["qemu-img", "info", "--output=json", name],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        raise UsageError("qemu-img not found: run scripts/install-deps.sh") from None
    except subprocess.TimeoutExpired:
        raise TargetUnavailable(f"{image}: qemu-img info did not answer in 60 s") from None
    if out.returncode != 0:
        reason = (out.stderr.strip().splitlines() or ["qemu-img info failed"])[-1]
        # "qemu-img: Could not open 'URI': Failed to connect to ...": the part after the name.
        reason = reason.rpartition(f"{name}': ")[2] or reason
        raise TargetUnavailable(f"cannot reach the remote disk {image}: {reason}")
    return int(json.loads(out.stdout)["virtual-size"])


def qsd_blockdev(image: str, node: str = "f0") -> str:
    """QEMU's ``--blockdev`` for the same remote disk."""
    if image_kind(image) == "rbd":
        spec = parse_rbd_spec(image)
        opts = [f"driver=rbd,node-name={node},pool={spec.pool},image={spec.image}"]
        if spec.namespace:
            opts.append(f"namespace={spec.namespace}")
        if spec.snap:
            opts.append(f"snapshot={spec.snap}")
        if os.environ.get(CEPH_CONF_ENV):
            opts.append(f"conf={os.environ[CEPH_CONF_ENV]}")
        return ",".join(opts)
    url = urlsplit(image)
    if url.scheme not in ("nbd", "nbd+unix"):
        raise UsageError(f"{image}: qsd takes nbd:// and nbd+unix:// URIs here (no TLS)")
    export = unquote(url.path.lstrip("/"))
    if url.scheme == "nbd+unix":
        sock = parse_qs(url.query).get("socket", [""])[0]
        server = f"server.type=unix,server.path={sock}"
    else:
        server = f"server.type=inet,server.host={url.hostname},server.port={url.port or NBD_PORT}"
    return f"driver=nbd,node-name={node},{server},export={export}"


def fio_engine(image: str) -> list[str]:
    """fio's own client engine on the same remote disk."""
    if image_kind(image) == "nbd":
        return ["--ioengine=nbd", f"--uri={image}"]
    spec = parse_rbd_spec(image)
    if spec.namespace or spec.snap:
        raise UsageError(f"{image}: fio's rbd engine takes rbd:POOL/IMAGE only")
    # --direct=1 turns librbd's cache off: with it on, fio's writes were acknowledged from
    # client memory (4 KiB write p50 28 us against 3.6 ms), which neither ours nor qsd does
    # until the guest's first flush (rbd_cache_writethrough_until_flush).
    return ["--ioengine=rbd", f"--pool={spec.pool}", f"--rbdname={spec.image}",
            "--clientname=admin", "--direct=1"]  # fmt: skip


def describe_image(image: str) -> str:
    kind = image_kind(image)
    return f"{'an NBD export' if kind == 'nbd' else 'an RBD image'} {image}"
