"""The check both stream-framer fuzzers share: the Cython framer and the reference framer
fed the same pieces agree feed by feed, and agree with the whole-stream statement of the
rules."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Framing = tuple[list[bytes], int, int]  # messages, truncated, incomplete_dropped


def assert_same_framing(make_framers: Callable[[int], Sequence[Any]],
                        frame_stream: Callable[[bytes, int], Framing], stream: bytes,
                        cuts: list[int], max_size: int, held_at_most: int) -> None:
    """make_framers(max_size): one framer per implementation. held_at_most: the most bytes
    a framer may hold between feeds."""
    framers = make_framers(max_size)
    messages: list[bytes] = []
    bounds = [0, *sorted(c % (len(stream) + 1) for c in cuts), len(stream)]
    for a, b in zip(bounds, bounds[1:]):
        fed = [framer.feed(stream[a:b]) for framer in framers]
        assert fed[0] == fed[1], (a, b)
        states = [(f.buffered, f.truncated, f.incomplete_dropped) for f in framers]
        assert states[0] == states[1], (a, b)
        assert states[0][0] <= held_at_most
        messages += fed[0]
    closed = [framer.close() for framer in framers]
    assert closed[0] == closed[1]
    messages += closed[0]
    counts = [(f.truncated, f.incomplete_dropped, f.buffered) for f in framers]
    assert counts[0] == counts[1]
    assert all(len(m) <= max_size for m in messages)
    assert (messages, *counts[0][:2]) == frame_stream(stream, max_size)
