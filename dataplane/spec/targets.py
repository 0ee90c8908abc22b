"""What an ``image=`` value names: an image file, an NBD export or an RBD image.

The forms are the ones libnbd and QEMU accept: ``nbd://HOST[:PORT]/EXPORT``,
``nbd+unix:///EXPORT?socket=PATH`` (and their TLS ``nbds`` spellings), and
``rbd:POOL[/NAMESPACE]/IMAGE[@SNAP]``.  The device's engines open them; the bench
hands them to qemu-storage-daemon and fio.  A malformed value raises ValueError
with a message that says the form.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

NBD_SCHEMES = ("nbd://", "nbd+unix://", "nbds://", "nbds+unix://")
RBD_PREFIX = "rbd:"
# A pool, namespace, image or snapshot name: no separators, no spaces, no control bytes.
_RBD_NAME = r"[^/@:\s\x00-\x1f]+"
_RBD_SPEC = re.compile(
    rf"rbd:(?P<pool>{_RBD_NAME})(?:/(?P<ns>{_RBD_NAME}))?/(?P<image>{_RBD_NAME})"
    rf"(?:@(?P<snap>{_RBD_NAME}))?"
)


def check_target(text: str) -> str | None:
    """A remote disk's target in its checked form, or None when ``text`` names a file."""
    kind = image_kind(text)
    if kind == "nbd":
        return check_nbd_uri(text)
    if kind == "rbd":
        return str(parse_rbd_spec(text))
    return None


def image_kind(image: str | os.PathLike[str]) -> str:
    """``"nbd"``, ``"rbd"`` or ``"file"``: what an ``image=`` value names."""
    text = os.fspath(image)
    if text.startswith(NBD_SCHEMES):
        return "nbd"
    if text.startswith(RBD_PREFIX):
        return "rbd"
    return "file"


def check_nbd_uri(uri: str) -> str:
    """``uri`` if it is an NBD URI that libnbd accepts the shape of, else ValueError."""
    if not uri.startswith(NBD_SCHEMES):
        raise ValueError(
            f"{uri!r} is not an NBD URI: use nbd://HOST[:PORT]/EXPORT or "
            "nbd+unix:///EXPORT?socket=PATH"
        )
    if "\0" in uri or any(c.isspace() for c in uri):
        raise ValueError(f"NBD URI {uri!r} contains spaces or NUL bytes")
    if "+unix://" in uri and "socket=" not in uri.partition("?")[2]:
        raise ValueError(f"NBD URI {uri}: a UNIX socket URI needs ?socket=PATH")
    return uri


@dataclass(frozen=True, slots=True)
class RbdSpec:
    """``rbd:POOL[/NAMESPACE]/IMAGE[@SNAP]``, parsed."""

    pool: str
    image: str
    namespace: str | None = None
    snap: str | None = None

    def __str__(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        snap = f"@{self.snap}" if self.snap else ""
        return f"{RBD_PREFIX}{self.pool}/{ns}{self.image}{snap}"


def parse_rbd_spec(spec: str) -> RbdSpec:
    """``rbd:POOL[/NAMESPACE]/IMAGE[@SNAP]`` -> RbdSpec, or ValueError saying the form."""
    m = _RBD_SPEC.fullmatch(spec)
    if not m:
        raise ValueError(
            f"{spec!r} is not an RBD image: use rbd:POOL/IMAGE or rbd:POOL/IMAGE@SNAP "
            "(options go in ceph-conf=, ceph-user=, ceph-keyring=)"
        )
    return RbdSpec(m["pool"], m["image"], m["ns"], m["snap"])
