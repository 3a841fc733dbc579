"""`kinesyslog listen`: starts the uploader and worker processes and runs the listener loop.

Start-up order: spool and ring (locked against a second relay on the same spool), the
uploader (which checks the stream before anything is bound), the sockets, the worker. The
parent process is the listener; supervisor.py watches the children and runs the shutdown.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import select
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kinesyslog import constants, metrics
from kinesyslog._fast.ring import Ring, RingError
from kinesyslog.config import Config, ConfigError
from kinesyslog.listeners import Listener, ListenerCounters, bind_all, bind_error
from kinesyslog.logs import setup_logging
from kinesyslog.shared import SharedState
from kinesyslog.spool import Spool
from kinesyslog.supervisor import Supervisor, fork_child, set_title
from kinesyslog.tls import TlsContextHolder

log = logging.getLogger("kinesyslog")
METRICS_DIR_NAME = ".metrics"
METRICS_SHM_DIR = Path("/dev/shm")


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


def start_uploader(config: Config, shared: SharedState) -> tuple[int, int, str]:
    """Forks the uploader; returns its pid, the write end of its wake-up pipe and the account
    id that owns the records."""
    from kinesyslog.uploader import UploaderSettings, uploader_main

    settings = UploaderSettings(
        spool_dir=config.spool_dir, output_dir=config.output_dir, stream=config.stream,
        region=config.region, profile=config.profile, endpoint_url=config.endpoint_url,
        shutdown_timeout=config.shutdown_timeout, role_arn=config.role_arn,
        role_session_name=config.role_session_name, external_id=config.external_id,
        kinesis_stream=config.kinesis_stream, partition_key=config.partition_key,
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
    """Makes the metric objects; with --prometheus-port in multiprocess mode, in a fresh
    directory (returned, for removal at exit)."""
    directory = None
    if config.prometheus_ports:
        directory = metrics_dir(config)
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(mode=0o750)
    metrics.setup(directory)
    return directory


def serve_metrics(config: Config, health: Callable[[], str | None]) -> list[Any]:
    servers: list[Any] = []
    try:
        for port in config.prometheus_ports:
            servers.append(metrics.bind_server(config.address, port, health))
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
    listener = Listener(supervisor.loop, sockets, ring, config, ListenerCounters(), tls)
    supervisors.append(supervisor)
    for server in servers:
        metrics.start_serving(server)
    code = supervisor.run(listener)
    for server in servers:
        server.shutdown()
        server.server_close()
    ring.close()
    return code
