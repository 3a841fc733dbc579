"""Listener helpers: canonical source addresses, the kernel's UDP drop count, the UDP receive
buffer, the loop's nap."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kinesyslog import constants
from kinesyslog._fast.proxy import address_text
from kinesyslog.listeners import (
    NAP_MIN_UDP_BUFFER,
    SO_RCVBUFFORCE,
    BoundSocket,
    loop_nap,
    request_receive_buffer,
    udp_kernel_drops,
)

RMEM_MAX = int(Path("/proc/sys/net/core/rmem_max").read_text())
ABOVE_RMEM_MAX = RMEM_MAX + (1 << 20)  # a receive buffer size that rmem_max would cap


def may_force_receive_buffer() -> bool:
    """Whether the kernel lets this process use SO_RCVBUFFORCE: CAP_NET_ADMIN in the initial
    user namespace (root in a user namespace has it only there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4096)
        except OSError:  # EPERM; or a kernel or sandbox without the option
            return False
    return True


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


# What the fallback test runs with CAP_NET_ADMIN given up. The kernel grants twice what is
# asked (for its bookkeeping), and getsockopt reports that.
GRANT_CODE = """
import socket, sys
from kinesyslog.listeners import request_receive_buffer
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    request_receive_buffer(sock, int(sys.argv[1]))
    print(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
"""
needs_room_above_rmem_max = pytest.mark.skipif(
    RMEM_MAX > 1 << 29, reason=f"net.core.rmem_max is {RMEM_MAX}: nothing asked can exceed it")


@needs_room_above_rmem_max
def test_the_udp_buffer_exceeds_rmem_max_only_where_the_process_may() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request_receive_buffer(sock, ABOVE_RMEM_MAX)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    # root or CAP_NET_ADMIN: SO_RCVBUFFORCE; anyone else: SO_RCVBUF, capped by rmem_max
    assert granted == 2 * (ABOVE_RMEM_MAX if may_force_receive_buffer() else RMEM_MAX)


@needs_room_above_rmem_max
@pytest.mark.skipif(not may_force_receive_buffer() or shutil.which("setpriv") is None,
                    reason="needs CAP_NET_ADMIN to give up, and setpriv (util-linux)")
def test_without_cap_net_admin_the_udp_buffer_falls_back_to_so_rcvbuf() -> None:
    # A root process whose capability bounding set lacks CAP_NET_ADMIN: SO_RCVBUFFORCE fails
    # with EPERM there, as it does for the packaged service's unprivileged user.
    done = subprocess.run(["setpriv", "--bounding-set=-net_admin", sys.executable, "-c",
                           GRANT_CODE, str(ABOVE_RMEM_MAX)], capture_output=True, text=True,
                          timeout=60, check=True)
    assert int(done.stdout) == 2 * RMEM_MAX
