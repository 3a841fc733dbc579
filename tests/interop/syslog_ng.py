"""syslog-ng 3.38 (Debian 12 package syslog-ng-core) unpacked privately and run as a sender.

syslog-ng-core conflicts with rsyslog (both provide system-log-daemon), so it is not
installed: ``apt-get download`` fetches it and those of its dependencies (recursively) that
are not installed, ``dpkg-deb -x`` unpacks them into one root under build/interop/, named by
the exact package files, and syslog-ng runs from there with ``LD_LIBRARY_PATH`` and
``--module-path`` pointing into that root. It needs no root privileges, only apt's package
lists (and network access the first time); without them the tests skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.interop.conftest import stop_process, wait_listening

PACKAGE = "syslog-ng-core"
CACHE = Path(__file__).resolve().parents[2] / "build" / "interop"
APT_TIMEOUT = 60.0
DOWNLOAD_TIMEOUT = 300.0
# apt-cache depends, keeping only the relations a program needs at run time
DEPENDS = ["apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
           "--no-breaks", "--no-replaces", "--no-enhances"]
HOW_TO_FIX = ("to fetch it, run apt-get update as root with access to a Debian 12 mirror "
              "(syslog-ng is only downloaded and unpacked under build/interop, not installed)")


class Unavailable(Exception):
    """syslog-ng cannot be fetched or unpacked here; the message says why."""


@dataclass(frozen=True)
class SyslogNg:
    """An unpacked syslog-ng: its binary, module directory and library directories."""

    root: Path
    binary: Path
    module_path: Path
    library_path: list[Path]

    def env(self) -> dict[str, str]:
        return {"TZ": "UTC", "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8",
                "LD_LIBRARY_PATH": os.pathsep.join(str(path) for path in self.library_path)}

    def command(self, work: Path, config: Path) -> list[str]:
        """Foreground, internal messages on stderr, every file it writes inside ``work``."""
        return [str(self.binary), "-F", "-e", "--no-caps", f"--module-path={self.module_path}",
                "-f", str(config), "-R", str(work / "persist"), "-p", str(work / "pid"),
                "-c", str(work / "ctl")]


def _run(command: list[str], timeout: float, cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                cwd=cwd, env={**os.environ, "LC_ALL": "C"}, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise Unavailable(f"{' '.join(command[:3])}: {error}") from None
    if result.returncode != 0:
        raise Unavailable(f"{' '.join(command[:3])} exited {result.returncode}: "
                          f"{result.stderr.strip()[-500:]}")
    return result.stdout


def _installed(names: set[str]) -> set[str]:
    """Those of ``names`` that dpkg has installed (unknown names are simply not)."""
    try:  # exits 1 when some name is unknown: not an error here
        result = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n",
                                 *sorted(names)], capture_output=True, text=True,
                                timeout=APT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise Unavailable(f"dpkg-query: {error}") from None
    # Status-Abbrev: wanted action, then state; state "i" is installed (also when held)
    return {fields[0] for fields in map(str.split, result.stdout.splitlines())
            if len(fields) > 1 and fields[1][1:2] == "i"}


def _dependency_groups(packages: list[str]) -> list[list[str]]:
    """Each Depends/PreDepends of ``packages`` as its alternatives (apt-cache lists the
    packages that provide a name below it, indented)."""
    groups: list[list[str]] = []
    current: list[str] | None = None  # the group the next line may add to
    continues = False
    for line in _run([*DEPENDS, *packages], APT_TIMEOUT).splitlines():
        if not line.startswith(" "):  # the next package
            current, continues = None, False
            continue
        if line.startswith("    "):  # a package providing the name above
            if current is not None:
                current.append(line.strip())
            continue
        kind, _, name = line.strip().lstrip("|").partition(": ")
        if kind not in ("Depends", "PreDepends"):
            current, continues = None, False
            continue
        if current is None or not continues:
            current = []
            groups.append(current)
        current.append(name)
        continues = line.startswith(" |")
    return groups


def _packages_to_fetch() -> list[str]:
    """syslog-ng-core and, recursively, each dependency no installed package satisfies
    (its first real alternative)."""
    chosen = [PACKAGE]
    pending = [PACKAGE]
    while pending:
        groups = _dependency_groups(pending)
        names = {name.strip("<>") for group in groups for name in group}
        present = _installed(names) | set(chosen)
        pending = []
        for group in groups:
            if any(name.strip("<>") in present for name in group):
                continue
            real = [name for name in group if not name.startswith("<")]
            if not real:
                raise Unavailable(f"no package provides {group[0]}")
            chosen.append(real[0])
            pending.append(real[0])
            present.add(real[0])
    return chosen


def _locate(root: Path) -> SyslogNg:
    binary = root / "usr" / "sbin" / "syslog-ng"
    modules = sorted(root.glob("usr/lib/syslog-ng/*/libafsocket.so"))
    if not binary.is_file() or not modules:
        raise Unavailable(f"{root} holds no syslog-ng binary or no afsocket module")
    module_path = modules[-1].parent
    libraries = sorted({path.parent for path in root.rglob("*.so*")
                        if module_path not in path.parents and path.parent != module_path})
    return SyslogNg(root, binary, module_path, libraries)


def unpacked(cache: Path = CACHE) -> SyslogNg:
    """syslog-ng unpacked in ``cache``/syslog-ng-<hash of the package files>, fetched and
    unpacked the first time; raises Unavailable (with what to do) when it cannot be."""
    for tool in ("apt-get", "apt-cache", "dpkg-query", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise Unavailable(f"{tool} is not available: syslog-ng is fetched with apt-get "
                              f"download from Debian 12's package lists; run the tests on "
                              f"Debian 12 (with apt)")
    try:
        packages = _packages_to_fetch()
        # One line per package: 'URI' FILE SIZE HASH. Names the exact versions, offline.
        files = sorted(line.split()[1] for line in _run(
            ["apt-get", "download", "--print-uris", *packages], APT_TIMEOUT).splitlines()
            if line.startswith("'"))
        if len(files) != len(packages):
            raise Unavailable(f"apt-get download --print-uris gave {files} for {packages}")
    except Unavailable as error:
        raise Unavailable(f"cannot resolve {PACKAGE}: {error}; {HOW_TO_FIX}") from None
    key = hashlib.sha256("\n".join(files).encode()).hexdigest()[:12]
    final = cache / f"syslog-ng-{key}"
    if not final.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        # Unpacked beside the final directory and renamed into place: sessions running at
        # once never see a half-unpacked root.
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache))
        try:
            debs = staging / "debs"
            debs.mkdir()
            try:
                _run(["apt-get", "download", *packages], DOWNLOAD_TIMEOUT, cwd=debs)
            except Unavailable as error:
                raise Unavailable(f"cannot download {PACKAGE}: {error}; {HOW_TO_FIX}") from None
            for deb in sorted(debs.glob("*.deb")):
                _run(["dpkg-deb", "-x", str(deb), str(staging / "root")], APT_TIMEOUT)
            shutil.rmtree(debs)
            (staging / "packages.txt").write_text("".join(f"{name}\n" for name in files))
            staging.chmod(0o755)  # mkdtemp made it private; other users may run it too
            with contextlib.suppress(OSError):  # another session was faster: use its root
                staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _locate(final / "root")


@contextlib.contextmanager
def running(syslog_ng: SyslogNg, work: Path, config: str,
            input_port: int) -> Iterator[subprocess.Popen[bytes]]:
    """syslog-ng in the foreground with ``config`` and its files in ``work``, once its TCP
    source listens on ``input_port``; stopped by PID (SIGTERM, then SIGKILL after a bounded
    wait) when the block ends. A failed assertion inside the block gets syslog-ng's log."""
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "syslog-ng.conf"
    conf.write_text(config)
    log = work / "syslog-ng.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(syslog_ng.command(work, conf), stdin=subprocess.DEVNULL,
                                   stdout=output, stderr=output, env=syslog_ng.env())
    try:
        wait_listening(process, "127.0.0.1", input_port, "syslog-ng's network source", log)
        try:
            yield process
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- syslog-ng log ---\n"
                                 f"{log.read_text(errors='replace')[-4000:]}") from None
    finally:
        stop_process(process)
