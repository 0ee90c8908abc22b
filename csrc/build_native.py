"""cffi build script for dataplane._native (API mode).

Lives outside the package, as pynacl does: the package imports the compiled
module and checks its version and capabilities at import time.

The extension is a list of C modules.  Module ``dp_x`` is ``dp_x.h`` (always),
``dp_x.c`` (if it has out-of-line code) and ``dp_x.cdef`` (the declarations
Python may call, in cffi's cdef syntax).  Order matters: a module's cdef may
use types declared by modules before it.
"""

import os
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
NATIVE_ABI_VERSION = 1

MODULES = ["dp_barrier", "dp_io", "dp_uring", "dp_aio", "dp_driver", "dp_limit"]
MODULES += ["dp_mem", "dp_narr", "dp_vq", "dp_bounce", "dp_blk", "dp_pool"]
MODULES += ["dp_remote", "dp_nbd", "dp_rbd", "dp_engine"]
MODULES += ["dp_stats", "dp_rec", "dp_fdio", "dp_sigbus", "dp_thread"]
MODULES += ["dp_inflight", "dp_limiter", "dp_delay"]

CDEF = "#define DP_NATIVE_ABI_VERSION ...\n" + "".join(
    (HERE / f"{m}.cdef").read_text() for m in MODULES if (HERE / f"{m}.cdef").exists()
)

SOURCE = f"#define DP_NATIVE_ABI_VERSION {NATIVE_ABI_VERSION}\n#include <fcntl.h>\n" + "".join(
    f'#include "{m}.h"\n' for m in MODULES
)

# Relative to the working directory of the build (the repo root under pip), as
# distutils wants relative source paths.
C_SOURCES = [os.path.relpath(HERE / f"{m}.c") for m in MODULES if (HERE / f"{m}.c").exists()]

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "dataplane._native",
    SOURCE,
    sources=C_SOURCES,
    include_dirs=[str(HERE)],
    # librbd ships no pkg-config file: -lrbd -lrados by name, as libnbd's -lnbd.
    libraries=["uring", "aio", "nbd", "rbd", "rados"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    + os.environ.get("DP_EXTRA_CFLAGS", "").split(),
    extra_link_args=os.environ.get("DP_EXTRA_LDFLAGS", "").split(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
