"""The raw image: opening, locking, and what the data path needs to know about it.

The image is locked with an OFD lock, as QEMU's image locking does, so two
backends can never write one image: an exclusive lock for read-write use, a
shared lock for read-only use.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
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


@dataclass(slots=True)
class Image:
    """An open, locked raw image."""

    path: Path
    fd: int
    size: int
    read_only: bool
    direct: bool
    align: int  # required buffer alignment for O_DIRECT I/O; 1 without O_DIRECT

    @property
    def sectors(self) -> int:
        return self.size // SECTOR_SIZE

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # also drops the OFD lock
            self.fd = -1


def open_image(path: str | os.PathLike[str], *, read_only: bool, cache: str) -> Image:
    """Open and lock ``path``, raising UsageError with a fix for every user mistake."""
    p = Path(path)
    if cache not in CACHE_MODES:
        raise UsageError(f"--cache {cache!r} is not one of {', '.join(CACHE_MODES)}")
    missing = f"image {p} does not exist: create it first, e.g. 'truncate -s 1G {p}'"
    with usage_on_os_error(missing, f"cannot stat image {p}"):
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
            f"image {p} is not {'readable' if read_only else 'writable'}{hint}"
        ) from None
    except OSError as e:
        if e.errno == errno.EINVAL and direct:
            raise UsageError(
                f"image {p} is on a filesystem without O_DIRECT support: use --cache writeback"
            ) from None
        raise UsageError(f"cannot open image {p}: {e.strerror}") from None
    try:
        _lock(fd, p, read_only)
        align = _probe_alignment(fd) if direct else 1
    except BaseException:
        os.close(fd)
        raise
    return Image(p, fd, st.st_size, read_only, direct, align)


def _lock(fd: int, path: Path, read_only: bool) -> None:
    ltype = fcntl.F_RDLCK if read_only else fcntl.F_WRLCK
    try:
        fcntl.fcntl(fd, F_OFD_SETLK, struct.pack(_FLOCK, ltype, os.SEEK_SET, 0, 0, 0))
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise ImageInUse(path, read_only) from None
        raise UsageError(f"cannot lock image {path}: {e.strerror}") from None


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
