"""`kinesyslog listen`: starts the uploader and worker processes and runs the listener loop.

Start-up order: spool and ring (locked against a second relay on the same spool), the
uploader (which checks the stream before anything is bound), the sockets, the worker. The
parent process is the listener. Shutdown (SIGTERM/SIGINT): stop accepting, frame what was
already received, close the ring's producer side, wait for the worker's final flush, then
let the uploader drain the spool until --shutdown-timeout.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import select
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kinesyslog import constants
from kinesyslog._fast.ring import Ring, RingError
from kinesyslog.config import Config, ConfigError
from kinesyslog.eventloop import EventLoop
from kinesyslog.listeners import (
    Listener,
    ListenerCounters,
    bind_all,
    bind_error,
    udp_kernel_drops,
)
from kinesyslog.logs import setup_logging
from kinesyslog.shared import SharedState
from kinesyslog.spool import Spool
from kinesyslog.tls import TlsContextHolder

log = logging.getLogger("kinesyslog")
CHILD_CHECK_INTERVAL = 0.2
STATS_INTERVAL = 60.0
METRICS_INTERVAL = 1.0
STATUS_INTERVAL = 10.0
GELF_EXPIRY_INTERVAL = 0.5
PROBLEM_LOG_INTERVAL = 10.0
METRICS_DIR_NAME = ".metrics"
METRICS_SHM_DIR = Path("/dev/shm")
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_ALLOCATION = 32 * 1024
HEAP_TRIM_INTERVAL = 10.0


def set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:  # optional at run time: only the process list looks plainer
        return
    setproctitle.setproctitle(title)


def limit_heap_retention() -> Callable[[], None] | None:
    """Makes glibc serve allocations of LARGE_ALLOCATION bytes or more with their own memory
    maps, returned to the system when freed; returns a function that gives the free memory
    between live heap chunks back too (malloc_trim), or None where libc is not glibc.

    Otherwise a burst of long messages or of TLS connections leaves the listener's heap
    hundreds of MB larger for good: freed chunks between live ones are kept. The listener's
    reads go into preallocated buffers, so its hot paths make no allocation that large.
    Called in the listener only, after the worker and uploader (which build large records)
    are forked."""
    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return None
    if not mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATION):
        log.debug("mallopt(M_MMAP_THRESHOLD) refused; the heap keeps its default policy")
    return lambda: malloc_trim(0)


def fork_child(role: str, body: Callable[[], int], debug: bool) -> int:
    """Forks a child that runs body() and exits with its return value, never returning."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = constants.EX_SOFTWARE
    try:
        setup_logging(debug, role)
        set_title(f"kinesyslog: {role}")
        code = body()
    except BaseException:
        logging.getLogger(f"kinesyslog.{role}").exception("%s failed", role)
        code = constants.EX_SOFTWARE
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return 0  # unreachable


def lock_spool(spool_dir: Path) -> int:
    fd = os.open(spool_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"--spool-dir {spool_dir}: another kinesyslog is using it; "
                          "stop it or give each instance its own spool directory") from None
    return fd


def verify_ring(path: Path) -> int:
    """Reads every uncommitted entry once (without committing); returns how many there are.

    Done before the worker starts, so that a damaged ring is set aside instead of making
    the worker fail on it at every start."""
    reader = Ring(str(path), 0)
    try:
        entries = 0
        while True:
            batch = reader.read_batch(65536)
            if not batch:
                return entries
            entries += len(batch)
    finally:
        reader.close()


def open_ring(config: Config, spool: Spool) -> Ring:
    """The ring, replaying what an earlier run left; a damaged one is moved to corrupt/."""
    for leftover in config.spool_dir.glob(f"{constants.RING_FILE_NAME}.*.tmp"):
        leftover.unlink()  # a ring whose creation a crash interrupted; it held nothing yet
    ring = None
    try:
        ring = Ring(str(config.ring_path), config.ring_capacity)
        replay = verify_ring(config.ring_path)
    except RingError as error:
        if ring is not None:
            ring.close()
        moved = spool.quarantine(config.ring_path, f"unreadable ring file: {error}")
        log.error("ring file %s is damaged (%s): moved to %s for inspection, its events not "
                  "yet spooled are not relayed; starting a new ring", config.ring_path, error,
                  moved)
        return Ring(str(config.ring_path), config.ring_capacity)
    if replay:
        log.info("%d event(s) of an earlier run are in the ring and will be spooled", replay)
    return ring


def read_status(fd: int, timeout: float) -> str:
    """The uploader's first line: 'READY <owner>' or 'FATAL <message>'."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "FATAL the uploader did not start within the start-up timeout"
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                return "FATAL the uploader exited during start-up"
            data += chunk
    return data.split(b"\n", 1)[0].decode(errors="replace")


class Supervisor:
    """The listener process: owns the sockets and watches the two children."""

    def __init__(self, config: Config, ring: Ring, uploader_pid: int, worker_pid: int,
                 shared: SharedState) -> None:
        from kinesyslog.metrics import DeltaPublisher
        from kinesyslog.systemd import Notifier

        self.config = config
        self.notifier = Notifier()
        self.status_seen = (time.monotonic(), 0)
        self.publisher = DeltaPublisher()
        self.ring = ring
        self.shared = shared
        self.children = {worker_pid: "worker", uploader_pid: "uploader"}
        self.worker_pid = worker_pid
        self.uploader_pid = uploader_pid
        self.loop = EventLoop()
        self.counters = ListenerCounters()
        self.exit_code = 0
        self.stopping = False

    def run(self, listener: Listener) -> int:
        self.listener = listener
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.request_stop)
        self.loop.add_signal_handler(signal.SIGCHLD, self.check_children)
        self.loop.add_signal_handler(signal.SIGHUP, listener.tls.reload)
        self.loop.call_every(CHILD_CHECK_INTERVAL, self.check_children)
        self.loop.call_every(STATS_INTERVAL, self.log_stats)
        self.loop.call_every(METRICS_INTERVAL, self.publish_metrics)
        self.loop.call_every(GELF_EXPIRY_INTERVAL, listener.expire_gelf_chunks)
        self.loop.call_every(constants.IDLE_CHECK_INTERVAL, listener.expire_idle)
        self.loop.call_every(PROBLEM_LOG_INTERVAL, listener.problems.flush)
        if self.notifier.enabled:
            self.loop.call_every(STATUS_INTERVAL, self.report_status)
        trim_heap = limit_heap_retention()
        if trim_heap is not None:
            self.loop.call_every(HEAP_TRIM_INTERVAL, trim_heap)
        listener.start()
        log.info("kinesyslog ready: %d listener(s)", len(listener.sockets))
        self.notifier.ready()
        self.loop.run()
        return self.shutdown()

    def request_stop(self) -> None:
        """Begins the shutdown: the uploader's --shutdown-timeout starts now, the worker
        takes everything the listener still writes."""
        if not self.stopping:
            log.info("stopping: no new connections; draining what was received")
            self.stopping = True
            self.notifier.stopping()
            self.signal_child(self.uploader_pid, signal.SIGTERM)
            self.signal_child(self.worker_pid, signal.SIGUSR1)
            self.loop.stop()

    def signal_child(self, pid: int, signum: int) -> None:
        if pid in self.children:
            os.kill(pid, signum)

    def check_children(self) -> None:
        for pid, role in list(self.children.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                del self.children[pid]
                self.forget_metrics(pid)
                log.error("the %s process exited unexpectedly (%s); kinesyslog stops so that "
                          "the service manager can restart it", role, describe_status(status))
                self.exit_code = 1
                self.request_stop()

    def report_status(self) -> None:
        """systemctl status shows the current throughput."""
        now, messages = time.monotonic(), self.counters.messages
        then, before = self.status_seen
        self.status_seen = (now, messages)
        rate = (messages - before) / max(now - then, 1e-9)
        self.notifier.status(f"{rate:.0f} messages/s, {messages} received, "
                             f"{self.counters.connections_open} connections, ring "
                             f"{100 * self.ring.uncommitted_bytes // self.ring.capacity}% full")

    def forget_metrics(self, pid: int) -> None:
        if self.config.prometheus_ports:
            from kinesyslog.metrics import mark_process_dead

            mark_process_dead(pid)

    def publish_metrics(self) -> None:
        from kinesyslog import metrics

        add = self.publisher.add
        counters = self.counters
        message_format = self.config.message_format
        for stats in list(counters.ports.values()):
            port = str(stats.port)
            add(metrics.MESSAGE_COUNT, stats.messages, stats.transport, port, message_format)
            add(metrics.MESSAGE_BYTES, stats.message_bytes, stats.transport, port,
                message_format)
            add(metrics.MESSAGES_TRUNCATED, stats.truncated, stats.transport, port)
        add(metrics.MESSAGES_DROPPED, counters.udp_dropped_ring_full, "ring_full")
        add(metrics.MESSAGES_DROPPED, counters.incomplete_dropped, "incomplete_frame")
        add(metrics.MESSAGES_DROPPED, counters.empty_datagrams, "empty_datagram")
        for reason, count in list(counters.rejected.items()):
            add(metrics.CONNECTIONS_REJECTED, count, reason.value)
        add(metrics.MESSAGES_DROPPED, counters.gelf_corrupt, "gelf_corrupt")
        kernel_drops = udp_kernel_drops(self.listener.sockets)
        if kernel_drops is not None:
            add(metrics.MESSAGES_DROPPED, kernel_drops, "udp_kernel")
        chunks = self.listener.gelf_chunks
        if chunks is not None:
            for reason in ("expired", "evicted", "invalid", "duplicates", "empty", "oversized"):
                add(metrics.GELF_CHUNKS_DROPPED, getattr(chunks, reason), reason)
        metrics.CONNECTIONS_OPEN.set(counters.connections_open)
        metrics.LISTENER_COUNT.set(len(self.listener.sockets))
        metrics.RING_FILL.set(self.ring.uncommitted_bytes / self.ring.capacity)

    def health(self) -> str | None:
        """None when healthy, else the reason (called from the metrics server's threads)."""
        if self.stopping:
            return "shutting down"
        for role in ("worker", "uploader"):
            if role not in self.children.values():
                return f"the {role} process is not running"
        problem = self.shared.spool_write_problem()
        if problem is not None:
            return problem
        spooled = self.shared.spool_bytes()
        if spooled >= self.config.spool_max_size:
            return (f"the spool holds {spooled} bytes, over --spool-max-size "
                    f"{self.config.spool_max_size}: Firehose uploads are not keeping up")
        return None

    def log_stats(self) -> None:
        c = self.counters
        closed = ", ".join(f"{count} {reason.value}"
                           for reason, count in sorted(c.rejected.items(),
                                                       key=lambda item: item[0].value))
        log.info("received %d messages (%d bytes), %d truncated, %d UDP dropped (ring full), "
                 "%d incomplete dropped, %d connections open, connections closed by the "
                 "relay: %s, ring %d%% full",
                 c.messages, c.message_bytes, c.truncated, c.udp_dropped_ring_full,
                 c.incomplete_dropped, c.connections_open, closed or "none",
                 100 * self.ring.uncommitted_bytes // self.ring.capacity)

    def shutdown(self) -> int:
        deadline = time.monotonic() + self.config.shutdown_timeout
        listener = self.listener
        listener.stop_accepting()
        if self.worker_pid in self.children:
            listener.drain_datagrams()
            listener.drain_connections(deadline)
        listener.close()
        listener.problems.flush(force=True)
        self.ring.close_producer()
        self.wait_for("worker", self.worker_pid, deadline + constants.WORKER_FLUSH_GRACE)
        self.signal_child(self.uploader_pid, signal.SIGUSR1)  # nothing new will be spooled
        self.wait_for("uploader", self.uploader_pid, deadline + constants.UPLOADER_EXIT_GRACE)
        self.log_stats()
        self.loop.close()
        log.info("kinesyslog stopped")
        return self.exit_code

    def wait_for(self, role: str, pid: int, deadline: float) -> None:
        while pid in self.children:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                del self.children[pid]
                self.forget_metrics(pid)
                if status != 0:
                    log.error("the %s process ended with %s", role, describe_status(status))
                    self.exit_code = self.exit_code or 1
                return
            if time.monotonic() >= deadline:
                log.error("the %s process did not stop in time; killing it", role)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                del self.children[pid]
                self.exit_code = self.exit_code or 1
                return
            time.sleep(0.02)


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def start_uploader(config: Config, shared: SharedState) -> tuple[int, int, str]:
    """Forks the uploader; returns its pid, the write end of its wake-up pipe and the account
    id that owns the records."""
    from kinesyslog.uploader import UploaderSettings, uploader_main

    settings = UploaderSettings(
        spool_dir=config.spool_dir, output_dir=config.output_dir, stream=config.stream,
        region=config.region, profile=config.profile, endpoint_url=config.endpoint_url,
        shutdown_timeout=config.shutdown_timeout, role_arn=config.role_arn,
        role_session_name=config.role_session_name, external_id=config.external_id,
    )
    status_read, status_write = os.pipe()
    wake_read, wake_write = os.pipe()
    pid = fork_child("uploader",
                     lambda: uploader_main(settings, status_write, wake_read, shared),
                     config.debug)
    os.close(status_write)
    os.close(wake_read)
    os.set_blocking(wake_write, False)
    status = read_status(status_read, constants.STARTUP_CHECK_TIMEOUT * 3)
    os.close(status_read)
    verdict, _, detail = status.partition(" ")
    if verdict != "READY":
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise ConfigError(detail)
    return pid, wake_write, detail


def metrics_dir(config: Config) -> Path:
    """Where prometheus_client keeps each process's values: memory-backed when possible.

    Its files are sparse memory maps; on the spool's file system, a full disk would turn the
    first write to a new page into SIGBUS. systemd's RuntimeDirectory= (/run/kinesyslog) or
    /dev/shm are tmpfs; the name is unique per spool, which one relay holds locked."""
    name = f"kinesyslog-metrics-{hashlib.sha256(bytes(config.spool_dir)).hexdigest()[:16]}"
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    for base in (Path(runtime) if runtime else None, METRICS_SHM_DIR):
        if base is not None and base.is_dir() and os.access(base, os.W_OK | os.X_OK):
            return base / name
    return config.spool_dir / METRICS_DIR_NAME


def prepare_metrics(config: Config) -> Path | None:
    """Switches prometheus_client to multiprocess mode (before anything imports it)."""
    if not config.prometheus_ports:
        return None
    directory = metrics_dir(config)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o750)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return directory


def serve_metrics(config: Config, health: Callable[[], str | None]) -> list[Any]:
    from kinesyslog.metrics import bind_server

    servers: list[Any] = []
    try:
        for port in config.prometheus_ports:
            servers.append(bind_server(config.address, port, health))
            log.info("metrics and health on http://%s:%d/metrics and /healthz",
                     config.address, port)
    except OSError as error:
        for server in servers:
            server.server_close()
        raise ConfigError(bind_error("--prometheus-port", config.address, port, error)) from None
    return servers


def run(config: Config) -> int:
    setup_logging(config.debug)
    set_title("kinesyslog: listener")
    spool = Spool(config.spool_dir)
    lock_fd = lock_spool(config.spool_dir)
    metrics_directory = prepare_metrics(config)
    try:
        return _run_locked(config, spool)
    finally:
        if metrics_directory is not None:
            shutil.rmtree(metrics_directory, ignore_errors=True)
        os.close(lock_fd)


def _run_locked(config: Config, spool: Spool) -> int:
    from kinesyslog.metrics import start_serving
    from kinesyslog.worker import worker_main
    removed = spool.remove_stale_temp_files()
    if removed:
        log.info("removed %d unfinished spool file(s) of an earlier run", removed)
    try:
        ring = open_ring(config, spool)
    except OSError as error:
        log.error("--spool-dir %s: cannot create the ring file %s (%s); free space or fix "
                  "the directory", config.spool_dir, config.ring_path, error.strerror)
        return constants.EX_CANTCREAT

    tls = TlsContextHolder(config)
    if tls.context is None:
        log.info("no TLS listener: TLS needs --cert and --key")
    shared = SharedState()
    uploader_pid, wake_fd, owner = start_uploader(config, shared)
    supervisors: list[Supervisor] = []  # health answers "starting" until there is one

    def health() -> str | None:
        return supervisors[0].health() if supervisors else "starting"

    try:
        sockets = bind_all(config)
        try:
            servers = serve_metrics(config, health)
        except ConfigError:
            for bound in sockets:
                bound.sock.close()
            raise
    except ConfigError:
        os.kill(uploader_pid, signal.SIGKILL)
        os.waitpid(uploader_pid, 0)
        raise
    ring.open_producer()
    parent_pid = os.getpid()

    def worker_body() -> int:
        for bound in sockets:
            bound.sock.close()
        for server in servers:
            server.socket.close()
        return worker_main(config, ring, owner, wake_fd, parent_pid, shared)

    # SIGUSR1 (drain) may come before the worker installed its handler: keep it pending.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    worker_pid = fork_child("worker", worker_body, config.debug)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
    os.close(wake_fd)
    supervisor = Supervisor(config, ring, uploader_pid, worker_pid, shared)
    listener = Listener(supervisor.loop, sockets, ring, config, supervisor.counters, tls)
    supervisors.append(supervisor)
    for server in servers:
        start_serving(server)
    code = supervisor.run(listener)
    for server in servers:
        server.shutdown()
        server.server_close()
    ring.close()
    return code
