"""The main job on a default: serve a sample image to a real QEMU guest and verify its I/O.

    make demo                       # or: .venv/bin/python examples/demo.py [--aio native]

1. builds (once) a small guest: Debian's kernel and a busybox initramfs;
2. creates a sample raw image and starts ``dataplane serve`` on it;
3. boots QEMU (``-accel tcg``, 2 vCPUs, ``vhost-user-blk-pci`` with 2 queues) on that socket;
4. inside the guest: O_DIRECT writes and read-backs, concurrent writers on both vCPUs, a
   flush, write-zeroes and discard;
5. checks every range the guest reported against the image file on the host, and prints what
   happened, where the guest kernel and initramfs are, and the QEMU command line that boots
   them by hand.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from dataplane.guest.harness.guest_image import GuestImage, GuestVmError, ensure_guest
from dataplane.guest.harness.processes import BackendFailed, short_socket_dir, start_dataplane
from dataplane.guest.harness.qemu import find_qemu, qemu_command, run_guest
from dataplane.guest.harness.workloads import (
    REGION_SIZE,
    check_image,
    combine_scripts,
    parse_irqs,
    parse_md5,
    parse_zero,
    verify_script,
)

IMAGE_SIZE = 256 << 20


def make_sample_image(path: Path) -> None:
    """A sparse raw image whose first 32 MiB hold a recognisable non-zero pattern."""
    pattern = bytes((i * 131) % 251 + 1 for i in range(4093))
    with path.open("wb") as f:
        f.write((pattern * ((32 << 20) // len(pattern) + 1))[: 32 << 20])
        f.truncate(IMAGE_SIZE)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--aio", default="io_uring", choices=["io_uring", "native", "threads"])
    ap.add_argument("--keep", type=Path, help="keep the image, logs and console here")
    args = ap.parse_args()

    if find_qemu() is None:
        print("demo: qemu-system-x86_64 is not installed: run scripts/install-deps.sh as root")
        return 2
    print("demo: preparing the guest (Debian kernel + busybox initramfs; built once)...",
          flush=True)  # fmt: skip
    guest = ensure_guest()
    print(f"demo: guest kernel {guest.vmlinuz}\n      guest initramfs {guest.initrd}")

    work = args.keep or Path(tempfile.mkdtemp(prefix="dataplane-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    image = work / "sample.img"
    make_sample_image(image)
    sock_dir = short_socket_dir()
    sock = sock_dir / "vblk0.sock"
    print(f"demo: serving {image} ({IMAGE_SIZE >> 20} MiB) on {sock} with --aio {args.aio}")
    try:
        backend = start_dataplane(
            sock, image, aio=args.aio, num_queues=2, log_path=work / "backend.log"
        )
    except BackendFailed as e:
        print(f"demo: the backend did not start:\n{e}")
        return 1
    ok = False
    try:
        print("demo: booting QEMU (-accel tcg, 2 vCPUs, vhost-user-blk-pci num-queues=2)...")
        script = combine_scripts(
            verify_script("/dev/vda", 0, writers=4, cpus=2),
            verify_script("/dev/vda", REGION_SIZE, writers=4, cpus=2),
        )
        result = run_guest(
            script, [sock], smp=2, num_queues=2, image=guest, log_path=work / "console.log"
        )
        print(
            f"demo: guest booted in {result.boot_seconds or 0:.1f} s; "
            f"whole run {result.total_seconds:.1f} s; workload exit status {result.rc}"
        )
        for line in result.lines("DP-INFO"):
            print(f"  guest sees: {line.split(' ', 2)[2]}")
        irqs = parse_irqs(result.output)
        print(f"  interrupts per virtqueue: {irqs}")
        md5s, zeros = parse_md5(result.output), parse_zero(result.output)
        problems = check_image(image, result.output)
        print(
            f"  host check: {len(md5s)} written/untouched ranges and {len(zeros)} zeroed "
            f"ranges compared with {image.name}: "
            + ("all match" if not problems else f"{len(problems)} problems")
        )
        for p in problems:
            print(f"    {p}")
        for line in result.lines("DP-FAIL"):
            print(f"  guest: {line}")
        size_ok = image.stat().st_size == IMAGE_SIZE
        if not size_ok:
            print("  the image changed size!")
        ok = result.rc == 0 and not problems and size_ok
    except GuestVmError as e:
        print(f"demo: the guest run failed: {e}\n{e.output[-2000:] if e.output else ''}")
    finally:
        rc = backend.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
        print(f"demo: backend stopped (exit {rc}); its log:")
        for line in backend.log_text().splitlines():
            print(f"  {line}")
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"demo: image, backend log and guest console kept in {work}")
    print(reuse_instructions(guest))
    print("demo: PASS" if ok else "demo: FAIL")
    return 0 if ok else 1


def reuse_instructions(guest: GuestImage) -> str:
    """How to boot the same guest by hand: the very QEMU command line the demo runs."""
    sock = Path("/tmp/vub.sock")
    qemu = qemu_command(guest, guest.initrd, [sock], smp=2, num_queues=2)
    return (
        "demo: to boot this guest yourself (a shell on the console, the disk as /dev/vda;\n"
        "      'poweroff -f' ends it):\n"
        "  truncate -s 1G disk.img\n"
        f"  .venv/bin/dataplane serve --socket {sock} --image disk.img --num-queues 2 &\n"
        f"  {shlex.join(qemu)}"
    )


if __name__ == "__main__":
    sys.exit(main())
