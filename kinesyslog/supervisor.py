"""The listener process's supervision of its worker and uploader: forking them, signals,
noticing a dead child, and the shutdown order.

Shutdown (SIGTERM/SIGINT): stop accepting, frame what was already received, close the
ring's producer side, wait for the worker's final flush, then let the uploader drain the
spool until --shutdown-timeout.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from kinesyslog import constants, heap, metrics
from kinesyslog._fast.ring import Ring
from kinesyslog.config import Config
from kinesyslog.eventloop import EventLoop
from kinesyslog.listener_report import ListenerReport
from kinesyslog.listeners import Listener
from kinesyslog.logs import setup_logging
from kinesyslog.shared import SharedState
from kinesyslog.systemd import Notifier

log = logging.getLogger("kinesyslog")
CHILD_CHECK_INTERVAL = 0.2
STATS_INTERVAL = 60.0
METRICS_INTERVAL = 1.0
STATUS_INTERVAL = 10.0
GELF_EXPIRY_INTERVAL = 0.5
PROBLEM_LOG_INTERVAL = 10.0
# The listener's allocations this large get their own memory maps (heap.py): a burst of
# long messages or of TLS connections would otherwise leave its heap hundreds of MB larger
# for good. Its reads go into preallocated buffers, so its hot paths make none that large.
LARGE_ALLOCATION = 32 * 1024
HEAP_TRIM_INTERVAL = 10.0


def set_title(title: str) -> None:
    try:
        import setproctitle
    except ImportError:  # optional at run time: only the process list looks plainer
        return
    setproctitle.setproctitle(title)


def fork_child(role: str, body: Callable[[], int], debug: bool) -> int:
    """Forks a child that runs body() and exits with its return value, never returning."""
    sys.stdout.flush()
    sys.stderr.flush()
    # Every object alive now leaves the collector's generations, in both processes: a
    # collection writes to each page holding a tracked object, and those pages would stop
    # being shared (each process would hold its own copy of the listener's heap).
    gc.freeze()
    # Free heap pages would be inherited, and counted in the child's RSS too (1 MB each).
    heap.trim()
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


class Supervisor:
    """The listener process: owns the sockets and watches the two children."""

    def __init__(self, config: Config, ring: Ring, uploader_pid: int, worker_pid: int,
                 shared: SharedState) -> None:
        self.config = config
        self.notifier = Notifier()
        self.ring = ring
        self.shared = shared
        self.children = {worker_pid: "worker", uploader_pid: "uploader"}
        self.worker_pid = worker_pid
        self.uploader_pid = uploader_pid
        self.loop = EventLoop()
        self.exit_code = 0
        self.stopping = False

    def run(self, listener: Listener) -> int:
        self.listener = listener
        self.report = report = ListenerReport(self.config, listener, self.ring, self.shared,
                                              self.notifier, self.processes_problem)
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.request_stop)
        self.loop.add_signal_handler(signal.SIGCHLD, self.check_children)
        self.loop.add_signal_handler(signal.SIGHUP, listener.tls.reload)
        self.loop.call_every(CHILD_CHECK_INTERVAL, self.check_children)
        self.loop.call_every(STATS_INTERVAL, report.log_stats)
        self.loop.call_every(METRICS_INTERVAL, report.publish_metrics)
        self.loop.call_every(GELF_EXPIRY_INTERVAL, listener.expire_gelf_chunks)
        self.loop.call_every(constants.IDLE_CHECK_INTERVAL, listener.limits.expire_idle)
        self.loop.call_every(PROBLEM_LOG_INTERVAL, listener.problems.flush)
        if self.notifier.enabled:
            self.loop.call_every(STATUS_INTERVAL, report.report_status)
        # After the forks: the worker and uploader build large records.
        if not heap.map_large_allocations(LARGE_ALLOCATION):
            log.debug("mallopt(M_MMAP_THRESHOLD) refused; the heap keeps its default policy")
        self.loop.call_every(HEAP_TRIM_INTERVAL, heap.trim)
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

    def forget_metrics(self, pid: int) -> None:
        if self.config.prometheus_ports:
            metrics.mark_process_dead(pid)

    def processes_problem(self) -> str | None:
        """None while every process runs (called from the metrics server's threads)."""
        if self.stopping:
            return "shutting down"
        for role in ("worker", "uploader"):
            if role not in self.children.values():
                return f"the {role} process is not running"
        return None

    def health(self) -> str | None:
        """None when healthy, else the reason, once the listener runs."""
        report = getattr(self, "report", None)
        return report.health() if report is not None else "starting"

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
        self.report.log_stats()
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


