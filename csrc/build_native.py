"""cffi build script for the two extensions (API mode): the device's and the guest's.

Lives outside the package, as pynacl does: the package imports the compiled
modules and checks their version and capabilities at import time.

- ``dataplane._native``, loaded by ``dataplane/device/c/clib.py``: everything the server
  runs (the ring walker, virtio-blk, the engines, the dataplane thread);
- ``dataplane.guest._native``, loaded by ``dataplane/guest/clib.py``: the
  guest side of the benchmark (the driver ring, its workload loop, the ideal
  device of ``--target limit``).

Both include dp_virtio.h, the wire both sides agree on; no C module is in
both.  An extension is a list of C modules.  Module ``dp_x`` is ``dp_x.h``
(always), ``dp_x.c`` (if it has out-of-line code) and ``dp_x.cdef`` (the
declarations Python may call, in cffi's cdef syntax).  Order matters: a
module's cdef may use types declared by modules before it.
"""

import os
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
NATIVE_ABI_VERSION = 1

# Header-only modules both sides include: the virtio wire, the ring's memory ordering, and
# the log-linear histogram buckets.
SPEC = ["dp_virtio", "dp_barrier", "dp_loglin"]

DEVICE = ["dp_io", "dp_uring", "dp_aio"]
DEVICE += ["dp_mem", "dp_narr", "dp_vq", "dp_bounce", "dp_blk", "dp_pool"]
DEVICE += ["dp_remote", "dp_nbd", "dp_nbd_conn", "dp_rbd", "dp_engine"]
DEVICE += ["dp_stats", "dp_rec", "dp_fdio", "dp_sigbus", "dp_thread"]
DEVICE += ["dp_loop", "dp_loop_wait", "dp_loop_narr"]
DEVICE += ["dp_inflight", "dp_limiter", "dp_delay", "dp_sandbox"]

GUEST = ["dp_hist", "dp_stamp", "dp_drv_ring", "dp_drv_slot", "dp_driver", "dp_limit"]


def _builder(name: str, modules: list[str], libraries: list[str]) -> FFI:
    modules = SPEC + modules
    cdef = "#define DP_NATIVE_ABI_VERSION ...\n" + "".join(
        (HERE / f"{m}.cdef").read_text() for m in modules if (HERE / f"{m}.cdef").exists()
    )
    source = f"#define DP_NATIVE_ABI_VERSION {NATIVE_ABI_VERSION}\n#include <fcntl.h>\n"
    source += "".join(f'#include "{m}.h"\n' for m in modules)
    # Relative to the working directory of the build (the repo root under pip), as
    # distutils wants relative source paths.
    sources = [os.path.relpath(HERE / f"{m}.c") for m in modules if (HERE / f"{m}.c").exists()]
    ffi = FFI()
    ffi.cdef(cdef)
    ffi.set_source(
        name,
        source,
        sources=sources,
        include_dirs=[str(HERE)],
        libraries=libraries,
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
        + os.environ.get("DP_EXTRA_CFLAGS", "").split(),
        extra_link_args=os.environ.get("DP_EXTRA_LDFLAGS", "").split(),
    )
    return ffi


# librbd ships no pkg-config file: -lrbd -lrados by name, as libnbd's -lnbd.
ffibuilder = _builder(
    "dataplane._native", DEVICE, ["uring", "aio", "nbd", "rbd", "rados", "seccomp"]
)
guest_ffibuilder = _builder("dataplane.guest._native", GUEST, [])
BUILDERS = (ffibuilder, guest_ffibuilder)

if __name__ == "__main__":
    for b in BUILDERS:
        b.compile(verbose=True)
