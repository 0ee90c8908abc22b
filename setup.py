# cffi_modules has no pyproject.toml spelling yet; everything else lives there.
from setuptools import setup

setup(
    cffi_modules=[
        "csrc/build.py:ffibuilder",  # dataplane._native, the device's
        "csrc/build.py:guest_ffibuilder",  # dataplane.guest._native, the guest's
    ]
)
