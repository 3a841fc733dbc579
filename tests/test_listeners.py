"""Listener helpers: canonical source addresses, the kernel's UDP drop count, the loop's nap."""

from __future__ import annotations

import socket

import pytest

from kinesyslog import constants
from kinesyslog._fast.proxy import address_text
from kinesyslog.listeners import NAP_MIN_UDP_BUFFER, BoundSocket, loop_nap, udp_kernel_drops


@pytest.mark.parametrize(("peer", "expected"), [
    ("192.0.2.7", "192.0.2.7"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
    ("2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"),
    ("fe80::1%eth0", "fe80::1%eth0"),
    ("::1", "::1"),
    ("0:0:0:0:0:ffff:c000:207", "192.0.2.7"),
])
def test_sources_are_canonical_text(peer: str, expected: str) -> None:
    assert address_text(peer) == expected


@pytest.mark.parametrize("text", ["", "192.0.2", "2001:db8::1::2", "host.example", "::ffff:1.2.3"])
def test_what_is_not_an_address_raises(text: str) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        address_text(text)


def test_udp_kernel_drops_are_read_for_our_sockets_only() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    receiver.bind(("127.0.0.1", 0))
    try:
        bound = [BoundSocket("udp", receiver.getsockname()[1], receiver)]
        assert udp_kernel_drops(bound) == 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(200):  # nobody reads: the small buffer overflows
                sender.sendto(b"x" * 1000, receiver.getsockname())
        assert udp_kernel_drops(bound) > 0
        assert udp_kernel_drops([]) == 0
    finally:
        receiver.close()


def test_the_loop_naps_only_when_every_udp_buffer_can_hold_the_pause() -> None:
    assert loop_nap([]) == constants.LISTENER_NAP  # TCP only: flow control holds the data
    assert loop_nap([NAP_MIN_UDP_BUFFER, 16 << 20]) == constants.LISTENER_NAP
    assert loop_nap([16 << 20, 425_984]) == 0.0  # net.core.rmem_max left at 212,992
