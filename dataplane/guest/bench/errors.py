"""Errors of a benchmark run (bad arguments are ``dataplane.errors.UsageError``)."""

from __future__ import annotations

from dataplane.errors import DataplaneError


class BenchError(DataplaneError):
    """A run failed: a backend did not start, stalled, returned errors, or failed verify."""
