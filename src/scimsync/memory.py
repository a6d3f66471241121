"""Giving freed heap back to the operating system between daemon cycles.

A cycle allocates and frees many small blocks (directory entries, plans, HTTP and SQL
objects); a few long-lived ones allocated among them (caches, interned strings) pin the
freed pages, and glibc's malloc only trims the top of the heap, so the process keeps
the high-water mark of its worst cycle (an outage's retries) for good. glibc's
malloc_trim(0) returns every free page inside the heap as well (madvise).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_freed() -> bool:
    """Return the heap's free pages to the OS; False where that cannot be done."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
