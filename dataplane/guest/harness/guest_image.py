"""The guest the end-to-end tests boot: its kernel and initramfs, built once and cached.

``scripts/build-guest.sh`` builds a kernel and a busybox initramfs (see
``dataplane.guest.harness.qemu`` for what its ``/init`` does); ``ensure_guest`` runs
it when needed, and ``make_cpio`` builds the small archive a run appends to
the initrd.  Standard library only.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dataplane

TAIL_LINES = 40


class GuestVmError(RuntimeError):
    """The guest could not be built or booted, or it died without reporting an exit code."""

    def __init__(self, message: str, output: str = "") -> None:
        self.output = output
        tail = tail_of(output)
        super().__init__(f"{message}\n--- guest console (tail) ---\n{tail}" if tail else message)


class GuestVmTimeout(GuestVmError):
    """The guest did not finish within the timeout; QEMU was killed."""


@dataclass(frozen=True)
class GuestImage:
    """A built guest: the kernel and the base initramfs."""

    vmlinuz: Path
    initrd: Path


def tail_of(text: str, n: int = TAIL_LINES) -> str:
    return "\n".join(text.replace("\r", "").splitlines()[-n:])


def build_script_path() -> Path:
    return Path(dataplane.__file__).resolve().parents[1] / "scripts" / "build-guest.sh"


def default_guest_dir() -> Path:
    env = os.environ.get("DATAPLANE_GUEST_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "dataplane" / "guest"


def ensure_guest(outdir: Path | None = None) -> GuestImage:
    """Build the guest with ``scripts/build-guest.sh`` unless it is up to date; return its paths.

    The script itself decides whether anything needs doing (it keeps a stamp of the kernel
    version it built from), so calling this repeatedly is cheap.
    """
    outdir = Path(outdir) if outdir is not None else default_guest_dir()
    script = build_script_path()
    if not script.is_file():
        raise GuestVmError(
            f"guest build script not found at {script}: ensure_guest() needs a dataplane source "
            "checkout (the script is not part of an installed wheel)"
        )
    # The script's progress (and apt's download) goes straight to our stderr: on a slow
    # mirror the first build takes minutes, and it must not look hung.
    proc = subprocess.run(
        ["bash", str(script), str(outdir)],
        stdin=subprocess.DEVNULL,
        stdout=2,  # this process's stderr, whatever sys.stderr is now
        check=False,
    )
    image = GuestImage(vmlinuz=outdir / "vmlinuz", initrd=outdir / "initrd.gz")
    if proc.returncode != 0:
        raise GuestVmError(
            f"{script} {outdir} failed with exit code {proc.returncode} (its output is above)"
        )
    for path in (image.vmlinuz, image.initrd):
        if not path.is_file() or path.stat().st_size == 0:
            raise GuestVmError(f"{script} succeeded but {path} is missing")
    return image


def make_cpio(files: dict[str, bytes], mode: int = 0o755) -> bytes:
    """A newc ("070701") cpio archive of regular files, ending with ``TRAILER!!!``.

    Keys are paths inside the archive (a leading "/" is dropped); missing parent directories are
    added as entries. Owner is root, mtime 0. The result can be appended to an initramfs.
    """
    out = bytearray()
    ino = 0x2000

    def entry(name: str, entry_mode: int, data: bytes = b"", nlink: int = 1) -> None:
        nonlocal ino
        ino += 1
        encoded = name.encode() + b"\0"
        fields_ = (
            ino,
            entry_mode,
            0,  # uid
            0,  # gid
            nlink,
            0,  # mtime
            len(data),
            0,  # devmajor
            0,  # devminor
            0,  # rdevmajor
            0,  # rdevminor
            len(encoded),
            0,  # check
        )
        out.extend(b"070701" + b"".join(b"%08X" % v for v in fields_))
        out.extend(encoded)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    dirs: set[str] = set()
    for raw_name, data in files.items():
        name = raw_name.lstrip("/")
        if not name or name.endswith("/"):
            raise ValueError(f"bad cpio member name {raw_name!r}")
        parts = name.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                entry(d, 0o040755, nlink=2)
        entry(name, 0o100000 | (mode & 0o7777), bytes(data))
    entry("TRAILER!!!", 0, nlink=1)
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)
