"""cffi build script for the two extensions (API mode): the device's and the guest's.

Lives outside the package, as pynacl does: the package imports the compiled
modules and checks their version and capabilities at import time.

- ``dataplane.device._c``, loaded by ``dataplane/device/c/__init__.py``: everything the
  server runs (the ring walker, virtio-blk, the engines, the dataplane thread), from
  csrc/device/;
- ``dataplane.guest._c``, loaded by ``dataplane/guest/clib.py``: the guest side of the
  benchmark (the driver ring, its workload loop, the ideal device of ``--target
  limit``), from csrc/guest/.

The folders are the lists.  Both extensions also build csrc/spec/: header-only code both
sides agree on and include (the virtio wire, the ring's memory ordering, the log-linear
histogram buckets, the clocks), including nothing outside csrc/spec/.  No C module is in
both wings, and an extension's include path holds only csrc/spec and its own folder, so a
wing's header included from the other wing does not compile (tests/test_layers.py checks
it too).

A C module ``dp_x`` is ``dp_x.h`` (always), ``dp_x.c`` (if it has out-of-line code) and
``dp_x.cdef`` (the declarations Python may call, in cffi's cdef syntax).  A cdef may use
the types of the modules its header includes, so the cdefs are joined in include order:
spec first, then each module after the headers it includes (ties by name).
"""

import os
import pathlib
import re

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
SPEC = HERE / "spec"
ABI_VERSION = 1


def modules(folder: pathlib.Path) -> list[str]:
    """The folder's C modules (one per header), each after the folder's headers it includes."""
    includes = {
        h.stem: set(re.findall(r'^#include "(dp_\w+)\.h"', h.read_text(), re.M))
        for h in folder.glob("dp_*.h")
    }
    order: list[str] = []
    left = {m: deps & includes.keys() - {m} for m, deps in includes.items()}
    while left:
        ready = sorted(m for m, deps in left.items() if not deps - set(order))
        if not ready:
            raise SystemExit(f"{folder}: headers include each other: {sorted(left)}")
        order.append(ready[0])
        del left[ready[0]]
    return order


def _builder(name: str, wing: str, libraries: list[str]) -> FFI:
    folders = [SPEC, HERE / wing]
    mods = [(folder, m) for folder in folders for m in modules(folder)]
    cdefs = [folder / f"{m}.cdef" for folder, m in mods]
    cdef = "#define DP_ABI_VERSION ...\n" + "".join(p.read_text() for p in cdefs if p.exists())
    source = f"#define DP_ABI_VERSION {ABI_VERSION}\n#include <fcntl.h>\n"
    source += "".join(f'#include "{m}.h"\n' for _, m in mods)
    # Relative to the working directory of the build (the repo root under pip), as
    # distutils wants relative source paths.
    sources = [os.path.relpath(p) for folder in folders for p in sorted(folder.glob("dp_*.c"))]
    ffi = FFI()
    ffi.cdef(cdef)
    ffi.set_source(
        name,
        source,
        sources=sources,
        include_dirs=[str(f) for f in folders],
        libraries=libraries,
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
        + os.environ.get("DP_EXTRA_CFLAGS", "").split(),
        extra_link_args=os.environ.get("DP_EXTRA_LDFLAGS", "").split(),
    )
    return ffi


# librbd ships no pkg-config file: -lrbd -lrados by name, as libnbd's -lnbd.
ffibuilder = _builder(
    "dataplane.device._c", "device", ["uring", "aio", "nbd", "rbd", "rados", "seccomp"]
)
guest_ffibuilder = _builder("dataplane.guest._c", "guest", [])
BUILDERS = (ffibuilder, guest_ffibuilder)

if __name__ == "__main__":
    for b in BUILDERS:
        b.compile(verbose=True)
