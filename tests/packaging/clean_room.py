"""Throwaway Debian roots for the package tests: made with debootstrap, entered with
systemd-nspawn (one command, or a full boot), removed only when nothing is mounted in them
and no process runs in them."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SUITE = "bullseye"  # Debian 11, glibc 2.31: the oldest userland the release build targets
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
# minbase has no init; systemd-sysv is what `systemd-nspawn -b` boots. Still no Python.
BOOTABLE = ("systemd-sysv",)
COMMAND_TIMEOUT = 600.0
BOOT_TIMEOUT = 120.0
POWEROFF_TIMEOUT = 120.0
NSPAWN = ("systemd-nspawn", "--quiet", "--register=no", "--keep-unit")


def mounted_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mounts") as mounts:
        return [line.split()[1] for line in mounts if (line.split()[1] + "/").startswith(prefix)]


def processes_in(root: Path) -> list[int]:
    """PIDs of every process whose root directory is root. By inode, not by path: seen
    from here, a process in nspawn's mount namespace has "/" as its root path."""
    wanted = os.stat(root)
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                own = os.stat(entry / "root")
                if (own.st_dev, own.st_ino) == (wanted.st_dev, wanted.st_ino):
                    found.append(int(entry.name))
    return found


def kill_processes_in(root: Path) -> None:
    for pid in processes_in(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while processes_in(root) and time.monotonic() < deadline:
        time.sleep(0.1)


def remove_root(root: Path) -> None:
    """Deletes a root only after its processes are gone and nothing is mounted in it."""
    kill_processes_in(root)
    mounts = mounted_under(root)
    if mounts:
        raise RuntimeError(f"not removing {root}: still mounted: {mounts}")
    shutil.rmtree(root)


def debootstrap(directory: Path) -> None:
    result = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(BOOTABLE)}", SUITE,
         str(directory), MIRROR],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=COMMAND_TIMEOUT,
        check=False)
    if result.returncode != 0:
        raise AssertionError(f"debootstrap failed:\n{result.stdout[-3000:]}{result.stderr}")


def copy_root(base: Path) -> Path:
    """A fresh copy of a root that is never entered itself (so nothing is mounted in it)."""
    assert not mounted_under(base)
    root = Path(tempfile.mkdtemp(prefix="kinesyslog-root-", dir="/var/tmp"))
    subprocess.run(["cp", "-a", f"{base}/.", str(root)], check=True, timeout=COMMAND_TIMEOUT)
    root.chmod(0o755)  # it becomes "/" for the root's users (mkdtemp made it 0700)
    return root


def nspawn_command(root: Path, *command: str, user: str | None = None,
                   env: dict[str, str] | None = None) -> list[str]:
    """Runs command as the root's PID 1 (SIGTERM to nspawn reaches it), in the host's
    network namespace, so the root's programs and the host's servers meet on loopback."""
    options = [*NSPAWN, "--pipe", f"--directory={root}", "--kill-signal=SIGTERM", "--chdir=/"]
    if user:
        options.append(f"--user={user}")
    options += [f"--setenv={name}={value}" for name, value in (env or {}).items()]
    return [*options, *command]


def in_root(root: Path, *command: str, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        nspawn_command(root, *command, env={"DEBIAN_FRONTEND": "noninteractive", **(env or {})}),
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=COMMAND_TIMEOUT,
        check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} in {root} exited {result.returncode}:\n"
                             f"{result.stdout[-4000:]}{result.stderr[-4000:]}")
    return result


class Booted:
    """`systemd-nspawn -b`: the root's systemd as PID 1; commands run inside with nsenter."""

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.init_pid = 0

    def __enter__(self) -> Booted:
        with open(self.log, "wb") as output:
            self.process = subprocess.Popen(
                [*NSPAWN, f"--directory={self.root}", "--boot", "--console=pipe"],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text(errors="replace")
            if not self.init_pid:
                self.init_pid = self._find_init()
            if self.init_pid:
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return self
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise AssertionError("the root did not boot:\n" + self.log.read_text(errors="replace"))

    def _find_init(self) -> int:
        assert self.process is not None
        for pid in processes_in(self.root):
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    # "NSpid: <pid here> <pid in the container>"
                    if line.startswith("NSpid:") and line.split()[-1] == "1":
                        return pid
        return 0

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["nsenter", "-t", str(self.init_pid), "-a", *command],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                timeout=COMMAND_TIMEOUT, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{command} in the booted root exited {result.returncode}:\n"
                                 f"{result.stdout[-4000:]}{result.stderr[-4000:]}")
        return result

    def __exit__(self, *exc: object) -> None:
        """Powers off (nspawn turns SIGTERM into an orderly shutdown); SIGKILL if stuck."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(POWEROFF_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        kill_processes_in(self.root)


@contextlib.contextmanager
def fresh_root(base: Path) -> Iterator[Path]:
    root = copy_root(base)
    try:
        yield root
    finally:
        remove_root(root)
