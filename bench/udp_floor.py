"""The floor under the listener's CPU per UDP datagram: bench/udp_floor.c receives the same
datagrams the way the listener does (recvmmsg batches, each datagram into a buffer the size
of the listener's, with the sender's address; the same reads per wake-up and the same nap)
and does nothing else, while bench/udp_blast.c sends them at a fixed rate. Compare its
us_per_datagram with the listener's CPU per datagram in `bench/run.py --scenario udp-<rate>`
at the same rate. `--receiver io_uring` makes the same receiver use a multishot io_uring
RECVMSG in place of recvmmsg.

    .venv/bin/python bench/udp_floor.py --rate 300000 --messages 3000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procs import udp_socket_drops  # noqa: E402
from bench.run import make_messages  # noqa: E402
from bench.senders import BLAST_SOURCE, build_c, send_udp_blast, write_datagrams  # noqa: E402
from bench.systems import free_port  # noqa: E402
from kinesyslog._fast.udp import DatagramReceiver  # noqa: E402
from kinesyslog.constants import DEFAULT_MAX_MESSAGE_SIZE, LISTENER_NAP  # noqa: E402
from kinesyslog.listeners import UDP_READ_BATCH, UDP_RECVMMSG_BATCH  # noqa: E402

FLOOR_SOURCE = Path(__file__).resolve().parent / "udp_floor.c"
RECEIVERS = ("recvmmsg", "io_uring")  # udp_floor.c's ways of receiving
IDLE_SECONDS = 1.0  # the receiver stops once nothing came for this long


def one_run(args: argparse.Namespace, floor: Path, blaster: Path,
            datagrams: Path) -> dict[str, object]:
    port = free_port(socket.SOCK_DGRAM)
    # The listener's buffers: --max-message-size + 2 bytes, at most UDP_RECV_SIZE.
    buffer = DatagramReceiver(args.max_message_size, args.batch, 1).buffer_size
    command = [str(floor), str(port), str(args.batch), str(args.per_event),
               str(round(args.nap * 1e6)), str(buffer), str(IDLE_SECONDS), args.receiver]
    receiver = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert receiver.stdout is not None
        # It prints this line once bound, or exits.
        if not receiver.stdout.readline().startswith('{"bound"'):
            _, err = receiver.communicate(timeout=10)
            raise OSError(f"udp_floor did not start: {err.strip()}")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        sent = send_udp_blast(blaster, datagrams, port, args.rate, 1, args.udp_batch,
                              args.timeout, args.udp_segments)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the sender, reaped
        drops = udp_socket_drops(port)
        out, err = receiver.communicate(timeout=args.timeout)
        if receiver.returncode != 0:
            raise OSError(f"udp_floor exited with {receiver.returncode}: {err.strip()}")
    finally:
        if receiver.poll() is None:
            os.kill(receiver.pid, signal.SIGKILL)
            receiver.wait(10)
    report = json.loads(out.strip().splitlines()[-1])
    report.pop("checksum", None)
    # The sender's system time includes the loopback delivery into the socket (softirq).
    sender_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    report.update(sent=sent.sent, send_per_s=round(sent.sent / sent.seconds),
                  kernel_drops=drops, sender_cpu=round(sender_cpu, 3))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=300_000, help="datagrams per second")
    parser.add_argument("--messages", type=int, default=3_000_000, help="datagrams per run")
    parser.add_argument("--size", type=int, default=200, help="bytes per datagram")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--receiver", choices=RECEIVERS, default="recvmmsg",
                        help="the kernel interface: the listener's recvmmsg, or io_uring")
    parser.add_argument("--batch", type=int, default=UDP_RECVMMSG_BATCH,
                        help="datagrams per recvmmsg call (the listener's)")
    parser.add_argument("--per-event", type=int, default=UDP_READ_BATCH,
                        help="datagrams per wake-up at most (the listener's)")
    parser.add_argument("--nap", type=float, default=LISTENER_NAP,
                        help="seconds of pause after a wake-up that emptied the socket")
    parser.add_argument("--max-message-size", type=int, default=DEFAULT_MAX_MESSAGE_SIZE)
    parser.add_argument("--udp-batch", type=int, default=64, help="the sender's sendmmsg batch")
    parser.add_argument("--udp-segments", type=int, default=1,
                        help="datagrams per UDP GSO send of the sender (1: no GSO)")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    floor, blaster = build_c(FLOOR_SOURCE), build_c(BLAST_SOURCE)
    if floor is None or blaster is None:
        print("udp_floor needs gcc", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="kinesyslog-udp-floor-") as work:
        datagrams = write_datagrams(Path(work) / "datagrams.bin",
                                    make_messages(args.messages, args.size, int(time.time())))
        for run in range(args.repeat):
            report = one_run(args, floor, blaster, datagrams)
            print(json.dumps({"run": run + 1, "receiver": args.receiver, "rate": args.rate,
                              **report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
