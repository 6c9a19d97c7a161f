"""Giving freed heap pages back to the kernel, so a worker's resident memory shows what it holds."""

from __future__ import annotations

import contextlib
import ctypes


def release_freed_heap() -> None:
    """glibc ``malloc_trim(0)``: loading a graph parses the whole file and frees it again, and warm-up frees
    its buffers; glibc keeps such pages mapped (tens of MB per graph) unless asked. A no-op where the C
    library has no ``malloc_trim``."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
