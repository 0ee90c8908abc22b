# cffi_modules has no pyproject.toml spelling yet; everything else lives there.
from setuptools import setup

setup(
    cffi_modules=[
        "csrc/build.py:ffibuilder",  # dataplane.device._c, the device's
        "csrc/build.py:guest_ffibuilder",  # dataplane.guest._c, the guest's
    ]
)
