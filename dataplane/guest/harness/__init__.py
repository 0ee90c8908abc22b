"""The test harness: backend processes and a real Linux guest under QEMU."""
