"""The raw image: opening, locking, and what the data path needs to know about it.

The image is locked with OFD locks, as QEMU's image locking does, so two
backends can never write one image.  Two locks, on two byte ranges:

- *write ownership*: bytes ``[0, SERVED_BYTE)``, exclusive while this backend may
  write the image (shared for read-only use).  It covers the bytes QEMU's own
  locking uses, so QEMU refuses the image while we hold it.
- *presence*: byte ``SERVED_BYTE``, shared by every backend serving the image, a
  migration destination included.  A plain start takes it exclusive for a moment:
  a second ``serve`` is refused even while the first one's rings stand still.

For live migration write ownership follows the running rings (serve/session.py):
the source gives it up when QEMU has stopped every ring (GET_VRING_BASE), the
destination (``incoming``, which starts without it) takes it when QEMU starts
its rings, and a source whose migration failed takes it back the same way.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import pwd
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from dataplane.errors import ImageInUse, UsageError, usage_on_os_error
from dataplane.spec.blk import SECTOR_SIZE
from dataplane.spec.choices import CACHE_MODES

# fcntl.F_OFD_SETLK exists from Python 3.12 on; the value is the kernel's.
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
_FLOCK = "hhqqi"  # struct flock: l_type, l_whence, l_start, l_len, l_pid (x86-64 layout)
SERVED_BYTE = 1 << 62  # the presence lock's byte; write ownership is every byte below it


@dataclass(slots=True)
class Image:
    """An open, locked raw image."""

    path: Path
    fd: int
    size: int
    read_only: bool
    direct: bool
    align: int  # required buffer alignment for O_DIRECT I/O; 1 without O_DIRECT
    writer: bool = False  # holds write ownership now (the exclusive lock)

    @property
    def sectors(self) -> int:
        return self.size // SECTOR_SIZE

    def take_writes(self) -> bool:
        """Take write ownership (again); False while another process holds the image."""
        if self.read_only or self.writer:
            return True
        try:
            _setlk(self.fd, fcntl.F_WRLCK, 0, SERVED_BYTE)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        self.writer = True
        return True

    def give_up_writes(self) -> None:
        """Let another backend (a migration's destination) take write ownership."""
        if self.writer:
            _setlk(self.fd, fcntl.F_UNLCK, 0, SERVED_BYTE)
            self.writer = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # also drops the OFD locks
            self.fd = -1
            self.writer = False


def _by_whom() -> str:
    """Whose permission counts: after ``serve --user``, that user's, not root's."""
    uid = os.geteuid()
    if uid == 0:
        return ""
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return f" as user {name} (uid {uid}, serve's --user: give that user access)"


def open_image(
    path: str | os.PathLike[str], *, read_only: bool, cache: str, incoming: bool = False
) -> Image:
    """Open and lock ``path``, raising UsageError with a fix for every user mistake.

    ``incoming``: a migration destination, on an image another backend serves: it is
    opened, but write ownership waits for ``Image.take_writes`` (the rings' start).
    """
    p = Path(path)
    if cache not in CACHE_MODES:
        raise UsageError(f"--cache {cache!r} is not one of {', '.join(CACHE_MODES)}")
    missing = f"image {p} does not exist: create it first, e.g. 'truncate -s 1G {p}'"
    with usage_on_os_error(missing, f"cannot stat image {p}{_by_whom()}"):
        st = os.stat(p)
    if stat.S_ISBLK(st.st_mode):
        raise UsageError(f"{p} is a block device: only raw image files are supported")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{p} is not a regular file: give a raw image file")
    if st.st_size == 0 or st.st_size % SECTOR_SIZE:
        raise UsageError(
            f"image {p} is {st.st_size} bytes, not a non-zero multiple of {SECTOR_SIZE}: "
            f"resize it, e.g. 'truncate -s 1G {p}'"
        )
    direct = cache == "none"
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
    try:
        fd = os.open(p, flags | (os.O_DIRECT if direct else 0))
    except PermissionError:
        hint = "" if read_only else ", or serve it with --read-only"
        raise UsageError(
            f"image {p} is not {'readable' if read_only else 'writable'}{_by_whom()}{hint}"
        ) from None
    except OSError as e:
        if e.errno == errno.EINVAL and direct:
            raise UsageError(
                f"image {p} is on a filesystem without O_DIRECT support: use --cache writeback"
            ) from None
        raise UsageError(f"cannot open image {p}: {e.strerror}") from None
    try:
        writer = _lock(fd, p, read_only, incoming)
        align = _probe_alignment(fd) if direct else 1
    except BaseException:
        os.close(fd)
        raise
    return Image(p, fd, st.st_size, read_only, direct, align, writer)


def _setlk(fd: int, ltype: int, start: int, length: int) -> None:
    fcntl.fcntl(fd, F_OFD_SETLK, struct.pack(_FLOCK, ltype, os.SEEK_SET, start, length, 0))


def _lock(fd: int, path: Path, read_only: bool, incoming: bool) -> bool:
    """Take the locks a start takes (see the module docstring); True: write ownership."""
    # (lock type, start, length) in order; a plain read-write start probes the presence
    # byte exclusive, takes write ownership, then shares the presence byte (one OFD lock
    # converts in place, so no other start slips in between).
    if read_only:
        steps = [(fcntl.F_RDLCK, SERVED_BYTE, 1), (fcntl.F_RDLCK, 0, SERVED_BYTE)]
    elif incoming:
        steps = [(fcntl.F_RDLCK, SERVED_BYTE, 1)]
    else:
        steps = [
            (fcntl.F_WRLCK, SERVED_BYTE, 1),
            (fcntl.F_WRLCK, 0, SERVED_BYTE),
            (fcntl.F_RDLCK, SERVED_BYTE, 1),
        ]
    try:
        for step in steps:
            _setlk(fd, *step)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise ImageInUse(path, read_only) from None
        raise UsageError(f"cannot lock image {path}: {e.strerror}") from None
    return not read_only and not incoming


def _probe_alignment(fd: int) -> int:
    """The smallest buffer alignment that O_DIRECT reads accept, as QEMU probes it."""
    buf = mmap.mmap(-1, 2 * 4096)
    try:
        for align in (512, 1024, 2048, 4096):
            view = memoryview(buf)[align : align + align]
            try:
                os.preadv(fd, [view], 0)
                return align
            except OSError as e:
                if e.errno != errno.EINVAL:
                    return 4096
            finally:
                view.release()
        return 4096
    finally:
        buf.close()


def resize_image(image: Image, new_size: int | None = None) -> int:
    """Grow the served image, or take in its new size; the capacity in sectors after.

    Without ``new_size``, the image's size is read again (through the fd we serve, so
    that a rename under us changes nothing): the operator has grown the file.  With
    it, the file is grown to ``new_size`` bytes (sparse, as ``truncate -s`` does).
    Shrinking is refused either way: the guest may hold data past the new end, and the
    capacity it has seen cannot go back.  Raises UsageError with what to do instead.
    """
    p = image.path
    size = _file_size(image)
    if new_size is not None:
        if new_size <= 0 or new_size % SECTOR_SIZE:
            raise UsageError(
                f"new size {new_size} of {p} is not a positive multiple of {SECTOR_SIZE} bytes"
            )
        if new_size < max(size, image.size):
            raise UsageError(
                f"shrinking {p} from {max(size, image.size)} to {new_size} bytes is refused: "
                "the guest may have data past the new end"
            )
        if new_size > size:
            if image.read_only:
                raise UsageError(f"{p} is served read-only: it cannot be grown")
            if not image.writer:
                raise UsageError(
                    f"{p} is written by another backend now (a live migration): grow it there"
                )
            try:
                os.ftruncate(image.fd, new_size)
            except OSError as e:
                raise UsageError(f"cannot grow {p} to {new_size} bytes: {e.strerror}") from None
            size = _file_size(image)
    if size < image.size:
        raise UsageError(
            f"{p} shrank from {image.size} to {size} bytes under the device: shrinking is "
            f"not supported; grow it back to at least {image.size} bytes"
        )
    if size % SECTOR_SIZE:
        raise UsageError(
            f"{p} is now {size} bytes, not a multiple of {SECTOR_SIZE}: grow it to "
            f"{-(-size // SECTOR_SIZE) * SECTOR_SIZE} bytes, e.g. with 'truncate -s'"
        )
    image.size = size
    return image.sectors


def _file_size(image: Image) -> int:
    try:
        return os.fstat(image.fd).st_size
    except OSError as e:  # pragma: no cover - our own open fd
        raise UsageError(f"cannot stat {image.path}: {e.strerror}") from None
