"""The .deb from packaging/build-deb.sh (dist/kinesyslog_*.deb), its systemd unit and its
environment file: contents and metadata (dpkg-deb), lintian, systemd-analyze, and, only on a
throwaway CI machine as root, a real install from a local apt repository, a run of the
installed relay as the kinesyslog user, a reinstall that keeps an edited conffile, and purge.

Build it first with `make deb`. Without it the tests skip, except in CI (CI=true)."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kinesyslog import __version__, cli, systemd
from kinesyslog.constants import (
    DEFAULT_SHUTDOWN_TIMEOUT,
    EX_CONFIG,
    SYSTEM_SPOOL_DIR,
    SYSTEMD_NOFILE_LIMIT,
    SYSTEMD_STOP_MARGIN,
)
from tests.e2e.relay_process import Relay, decode_records, events_of, free_ports, send_udp

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist"
ONE_FOLDER = DIST / "kinesyslog-dir"
UNIT = ROOT / "packaging" / "kinesyslog.service"
DEFAULT_FILE = ROOT / "packaging" / "kinesyslog.default"
IN_CI = os.environ.get("CI") == "true"
RUN_TIMEOUT = 300.0
MAX_EXPOSURE = 2.0
UDP_MESSAGE = b"<13>1 2026-11-21T10:00:00.123Z host app 1 - - from the installed package"
# dpkg-deb -c: "drwxr-xr-x root/root 0 2026-11-21 10:00 ./usr/" (+ " -> target" for links)
_LISTING = re.compile(r"(\S+) (\S+)/(\S+) +\d+ \S+ \S+ \./(\S*?)(?: -> (\S+))?$")


def missing(reason: str) -> None:
    """Fails in CI, skips elsewhere."""
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT,
                            stdin=subprocess.DEVNULL, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}:\n{result.stdout}"
                             f"{result.stderr}")
    return result


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def deb() -> Path:
    debs = sorted(DIST.glob("kinesyslog_*.deb"))
    if not debs:
        missing(f"no {DIST}/kinesyslog_*.deb: run `make deb`")
    assert len(debs) == 1, debs
    return debs[0]


def debian_version(version: str) -> str:
    """PEP 440 pre-releases sort before the release in Debian with "~"."""
    return re.sub(r"\.?(dev|a|b|rc)", r"~\1", version, count=1)


def newest_glibc(folder: Path) -> str:
    """The newest GLIBC_x.y symbol version any ELF file of the one-folder build needs."""
    elves = [str(p) for p in folder.rglob("*")
             if p.is_file() and not p.is_symlink() and p.read_bytes()[:4] == b"\x7fELF"]
    dynamic = run("objdump", "-T", *elves, check=False).stdout
    versions = {tuple(int(n) for n in v.split(".")) for v in
                re.findall(r"GLIBC_(\d+(?:\.\d+)+)", dynamic)}
    return ".".join(str(n) for n in max(versions))


def listing(deb: Path) -> dict[str, tuple[str, str, str | None]]:
    """{path: (mode, owner/group, link target)} of the data part."""
    entries = {}
    for line in run("dpkg-deb", "-c", str(deb)).stdout.splitlines():
        match = _LISTING.match(line)
        assert match, line
        mode, owner, group, path, target = match.groups()
        entries[path.rstrip("/")] = (mode, f"{owner}/{group}", target)
    return entries


def test_debian_version() -> None:
    assert debian_version("3.0.0.dev0") == "3.0.0~dev0"
    assert debian_version("3.0.0rc1") == "3.0.0~rc1"
    assert debian_version("3.0.0") == "3.0.0"


def test_metadata(deb: Path) -> None:
    fields = {name: run("dpkg-deb", "-f", str(deb), name).stdout.strip()
              for name in ("Package", "Version", "Architecture", "Depends", "Section")}
    assert fields == {
        "Package": "kinesyslog",
        "Version": debian_version(__version__),
        "Architecture": run("dpkg", "--print-architecture").stdout.strip(),
        "Depends": f"libc6 (>= {newest_glibc(ONE_FOLDER)}), adduser",
        "Section": "admin",
    }
    assert deb.name == f"kinesyslog_{fields['Version']}_{fields['Architecture']}.deb"
    assert run("dpkg-deb", "-I", str(deb), "conffiles").stdout == "/etc/default/kinesyslog\n"


def test_contents(deb: Path) -> None:
    entries = listing(deb)
    assert {owner for _, owner, _ in entries.values()} == {"root/root"}
    assert entries["usr/bin/kinesyslog"] == ("lrwxrwxrwx", "root/root",
                                             "../lib/kinesyslog/kinesyslog")
    expected_modes = {
        "usr/lib/kinesyslog/kinesyslog": "-rwxr-xr-x",
        "lib/systemd/system/kinesyslog.service": "-rw-r--r--",
        "etc/default/kinesyslog": "-rw-r--r--",
        "usr/share/doc/kinesyslog/copyright": "-rw-r--r--",
        "usr/share/doc/kinesyslog/changelog.gz": "-rw-r--r--",
        "usr/share/lintian/overrides/kinesyslog": "-rw-r--r--",
        "usr/lib/kinesyslog": "drwxr-xr-x",
    }
    assert {path: entries[path][0] for path in expected_modes} == expected_modes
    # Nothing else outside the one-folder build, and exactly that build inside it.
    prefix = "usr/lib/kinesyslog/"
    others = {p for p in entries if not p.startswith(prefix)} - set(expected_modes)
    assert others == {"", "usr", "usr/bin", "usr/bin/kinesyslog", "usr/lib", "lib",
                      "lib/systemd", "lib/systemd/system", "etc", "etc/default", "usr/share",
                      "usr/share/doc", "usr/share/doc/kinesyslog", "usr/share/lintian",
                      "usr/share/lintian/overrides"}
    built = {str(p.relative_to(ONE_FOLDER)) for p in ONE_FOLDER.rglob("*")}
    assert {p[len(prefix):] for p in entries if p.startswith(prefix)} == built
    for pyx in (ROOT / "kinesyslog" / "_fast").glob("*.pyx"):
        assert any(re.fullmatch(rf"{prefix}_internal/kinesyslog/_fast/{pyx.stem}\..*\.so", p)
                   for p in entries), pyx.stem


def test_packaged_files_and_scripts(deb: Path, tmp_path: Path) -> None:
    run("dpkg-deb", "-x", str(deb), str(tmp_path / "data"))
    data = tmp_path / "data"
    assert (data / "lib/systemd/system/kinesyslog.service").read_text() == UNIT.read_text()
    assert (data / "etc/default/kinesyslog").read_text() == DEFAULT_FILE.read_text()
    run("dpkg-deb", "-e", str(deb), str(tmp_path / "control"))
    control = tmp_path / "control"
    assert sorted(p.name for p in control.iterdir()) == [
        "conffiles", "control", "md5sums", "postinst", "postrm", "prerm"]
    for name in ("postinst", "prerm", "postrm"):
        script = control / name
        assert stat.S_IMODE(script.stat().st_mode) == 0o755, name
        assert script.read_text().startswith("#!/bin/sh\n"), name
        assert "\nset -e\n" in script.read_text(), name
        run("sh", "-n", str(script))


def test_lintian(deb: Path) -> None:
    if shutil.which("lintian") is None:
        missing("lintian is not installed (apt-get install lintian)")
    result = run("lintian", "--fail-on", "warning", "--display-level", ">=warning", str(deb),
                 check=False)
    hints = [line for line in result.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert (result.returncode, hints) == (0, []), result.stdout + result.stderr


def test_environment_file_lists_every_setting() -> None:
    """Every KINESYSLOG_* option of `listen` commented out, except the spool directory."""
    lines = DEFAULT_FILE.read_text().splitlines()
    assigned = [line for line in lines if re.match(r"[A-Z0-9_]+=", line)]
    assert assigned == [f"KINESYSLOG_SPOOL_DIR={SYSTEM_SPOOL_DIR}"]
    commented = {line[1:].split("=", 1)[0] for line in lines if re.match(r"#[A-Z0-9_]+=", line)}
    variables = {name for name, _ in systemd.listen_variables(cli.listen)}
    assert {v for v in commented if v.startswith("KINESYSLOG_")} == variables - {
        "KINESYSLOG_SPOOL_DIR"}


def test_unit_matches_constants() -> None:
    """The static unit repeats values that constants.py owns."""
    settings = dict(line.split("=", 1) for line in UNIT.read_text().splitlines()
                    if re.match(r"(TimeoutStopSec|RestartPreventExitStatus|LimitNOFILE|"
                                r"ReadWritePaths|Environment|User)=", line))
    assert settings == {
        "TimeoutStopSec": str(int(DEFAULT_SHUTDOWN_TIMEOUT) + SYSTEMD_STOP_MARGIN),
        "RestartPreventExitStatus": str(EX_CONFIG),
        "LimitNOFILE": str(SYSTEMD_NOFILE_LIMIT),
        "ReadWritePaths": SYSTEM_SPOOL_DIR,
        "Environment": f"KINESYSLOG_SPOOL_DIR={SYSTEM_SPOOL_DIR}",
        "User": "kinesyslog",
    }


def test_unit_security_exposure() -> None:
    analyze = tool("systemd-analyze")
    result = run(analyze, "security", "--offline=true", "--no-pager", str(UNIT), check=False)
    match = re.search(r"Overall exposure level for kinesyslog\.service: (\d+\.\d+)",
                      result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


def test_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify prints nothing; ExecStart must exist, so the copy verified
    starts the one-folder build in dist/ instead of /usr/bin/kinesyslog."""
    analyze = tool("systemd-analyze")
    if not (ONE_FOLDER / "kinesyslog").is_file():
        missing(f"{ONE_FOLDER}/kinesyslog is not built: run `make executable`")
    text = UNIT.read_text()
    assert text.count("\nExecStart=/usr/bin/kinesyslog listen\n") == 1
    unit = tmp_path / "kinesyslog.service"
    unit.write_text(text.replace("\nExecStart=/usr/bin/kinesyslog ",
                                 f"\nExecStart={ONE_FOLDER}/kinesyslog "))
    result = run(analyze, "verify", str(unit), check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# The real install, on a throwaway CI machine only.

APT_LIST = Path("/etc/apt/sources.list.d/kinesyslog-test.list")


def apt(*args: str) -> subprocess.CompletedProcess[str]:
    """apt-get limited to the test's source list: other sources are not refreshed."""
    return run("apt-get", "-q", "-o", f"Dir::Etc::sourcelist={APT_LIST}",
               "-o", "Dir::Etc::sourceparts=-", "-o", "APT::Get::List-Cleanup=0", *args)


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


@contextlib.contextmanager
def local_repository(deb: Path) -> Iterator[Path]:
    """A local apt repository with the .deb in it, in APT_LIST; all removed afterwards."""
    repo = Path(tempfile.mkdtemp(prefix="kinesyslog-apt-"))
    try:
        repo.chmod(0o755)  # apt downloads as the _apt user
        run(str(ROOT / "packaging" / "build-apt-repo.sh"), str(repo), str(deb))
        assert {p.name for p in repo.iterdir()} == {deb.name, "Packages", "Packages.gz"}
        APT_LIST.write_text(f"deb [trusted=yes] file:{repo} ./\n")
        yield repo
    finally:
        APT_LIST.unlink(missing_ok=True)
        for cached in Path("/var/lib/apt/lists").glob(f"*{repo.name}*"):
            cached.unlink()
        shutil.rmtree(repo)


def run_installed_relay(work: Path) -> tuple[int, list[tuple[str, str, dict]]]:
    """The installed binary as the kinesyslog user, one UDP message into --output-dir.

    setpriv rather than runuser: runuser stays the parent and, on SIGTERM, kills the relay
    itself and exits with the signal, which would hide the relay's own exit status."""
    output = work / "out"
    output.mkdir()
    user = pwd.getpwnam("kinesyslog")
    os.chown(output, user.pw_uid, user.pw_gid)
    port = free_ports()
    command = ["env", "-i", "-C", "/", "PATH=/usr/bin:/bin", f"HOME={SYSTEM_SPOOL_DIR}",
               "setpriv", "--reuid=kinesyslog", "--regid=kinesyslog", "--init-groups",
               "/usr/bin/kinesyslog"]
    relay = Relay(["--output-dir", str(output), "--spool-dir", SYSTEM_SPOOL_DIR,
                   "--address", "127.0.0.1", "--udp-port", str(port), "--tcp-port", str(port),
                   "--flush-interval", "0.5"], command=command)
    relay.start()
    try:
        send_udp("127.0.0.1", port, [UDP_MESSAGE + b"\n"])
        assert relay.stop() == 0, relay.log
    finally:
        relay.kill()
    records = [r for path in output.iterdir() for r in decode_records(path.read_bytes())]
    return port, events_of(records)


@pytest.mark.skipif(not IN_CI or os.geteuid() != 0,
                    reason="installs packages and users: only as root on a CI machine (CI=true)")
def test_apt_install_run_reinstall_purge(deb: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="kinesyslog-deb-test-"))
    work.chmod(0o755)  # the kinesyslog user writes below it
    try:
        with local_repository(deb):
            apt("update")
            apt("install", "-y", "--no-install-recommends", "kinesyslog")

            user = pwd.getpwnam("kinesyslog")
            assert (user.pw_dir, user.pw_shell) == (SYSTEM_SPOOL_DIR, "/usr/sbin/nologin")
            assert grp.getgrgid(user.pw_gid).gr_name == "kinesyslog"
            spool = os.stat(SYSTEM_SPOOL_DIR)
            assert (stat.S_IMODE(spool.st_mode), spool.st_uid, spool.st_gid) == (
                0o750, user.pw_uid, user.pw_gid)
            assert run("/usr/bin/kinesyslog", "--version").stdout == (
                f"kinesyslog, version {__version__}\n")
            if systemd_running():
                enabled = run("systemctl", "is-enabled", "kinesyslog", check=False).stdout
                active = run("systemctl", "is-active", "kinesyslog", check=False).stdout
                assert (enabled, active) == ("enabled\n", "inactive\n")

            port, events = run_installed_relay(work)
            assert [(g, s, e["message"]) for g, s, e in events] == [
                (f"/kinesyslog/syslog/{port}", "127.0.0.1", UDP_MESSAGE.decode())]

            edited = Path("/etc/default/kinesyslog")
            edited.write_text(edited.read_text() + "KINESYSLOG_DEBUG=true\n")
            run("dpkg", "-i", str(deb))
            assert edited.read_text().endswith("\nKINESYSLOG_DEBUG=true\n")
            assert pwd.getpwnam("kinesyslog").pw_uid == user.pw_uid

            apt("purge", "-y", "kinesyslog")
            with pytest.raises(KeyError):
                pwd.getpwnam("kinesyslog")
            with pytest.raises(KeyError):
                grp.getgrnam("kinesyslog")
            assert not Path(SYSTEM_SPOOL_DIR).exists()
            assert not edited.exists()
            assert not Path("/usr/bin/kinesyslog").exists()
    finally:
        if run("dpkg-query", "-W", "kinesyslog", check=False).returncode == 0:
            run("dpkg", "--purge", "kinesyslog", check=False)
        shutil.rmtree(work)
