"""kinesyslog/heap.py: freed heap memory goes back to the system (glibc), in a process of its
own so that the test process's heap is left as it is."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import re
from kinesyslog import heap

def anonymous_kb():
    return int(re.search(r"RssAnon:\s+(\d+)", open("/proc/self/status").read()).group(1))

assert heap.map_large_allocations(32 * 1024)  # glibc: the machines the tests run on
blocks = [bytearray(1000) for _ in range(40_000)]  # 40 MB of small heap chunks, touched
before = anonymous_kb()
del blocks[:-1]  # all freed but the last, which keeps the heap's top where it is
freed = anonymous_kb()
heap.trim()
print(before, freed, anonymous_kb())
"""


def test_trim_gives_back_free_pages_between_live_chunks() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=60, check=True)
    before, freed, trimmed = map(int, result.stdout.split())
    assert before - freed < 10_000, (before, freed)  # KB: free() alone keeps them
    assert freed - trimmed > 30_000, (freed, trimmed)
