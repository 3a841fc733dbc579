"""glibc's heap: what the processes do to give freed memory back to the system.

glibc keeps the memory of freed chunks for later allocations, also where whole pages of it
lie between live chunks, and hands out large blocks from the heap once a large block was
freed. A long-running relay process would keep the peak of any burst for good, and a child
forked from the listener would inherit (and count in its RSS) every free page the listener
held. Elsewhere than glibc these are no-ops.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@functools.cache  # the listener trims every 10 s: open the library once
def _libc() -> Any | None:
    """The C library, if it is glibc (it has malloc_trim)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


def trim() -> None:
    """Gives the heap's free pages back to the system (malloc_trim), wherever they lie."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def map_large_allocations(threshold: int) -> bool:
    """Makes glibc serve allocations of threshold bytes or more with their own memory maps,
    returned to the system when freed; False where that cannot be set."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
