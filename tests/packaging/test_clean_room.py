"""The packages in a clean room: a Debian 11 root made with `debootstrap --variant=minbase`
(glibc 2.31, systemd 247, no Python), so the release build's glibc floor and the package's
dependencies are tested where nothing of the build machine helps.

* apt: install from a local repository, the user, directories and unit, the installed
  binary run against moto_server on the host's loopback, an upgrade to a newer build that
  keeps an edited /etc/default/kinesyslog, purge.
* boot: `systemd-nspawn -b`; systemd starts the enabled service from the package with the
  unit's hardening, on a privileged port; messages read back from S3; `systemctl stop`
  drains; `systemctl restart` and an upgrade restart it.
* rpm: `rpm --root` into such a root; its scriptlets create the user and enable the unit.
* the one-file executable, as nobody, in such a root.

Root and CI only (CI=true): debootstrap needs the network, the tests need root. Run
`make test` (or the release build and `make deb rpm`) first."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kinesyslog import __version__
from kinesyslog.constants import SPOOL_RECORD_PREFIX, SPOOL_RECORD_SUFFIX, SYSTEM_SPOOL_DIR
from tests.conftest import MotoServer
from tests.e2e.relay_process import (
    Relay,
    decode_records,
    events_of,
    free_ports,
    send_tcp,
    send_udp,
    wait_for,
)
from tests.e2e.test_relay import s3_events
from tests.packaging import clean_room
from tests.packaging.clean_room import Booted, in_root, nspawn_command

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("CI") != "true" or os.geteuid() != 0,
                       reason="debootstrap and systemd-nspawn: as root on a CI machine only"),
]

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist"
REPOSITORY = "/srv/kinesyslog-apt"  # inside the root
DELIVERY_TIMEOUT = 60.0
SPOOL = SYSTEM_SPOOL_DIR.lstrip("/")
UNIT = "lib/systemd/system/kinesyslog.service"
ENABLED_LINK = "etc/systemd/system/multi-user.target.wants/kinesyslog.service"
BURST = 2000
NEWER_THAN_SYSTEMD_247 = {"PrivateIPC"}


def built(pattern: str) -> Path:
    found = sorted(DIST.glob(pattern))
    if len(found) != 1:
        pytest.fail(f"expected one {DIST}/{pattern}, found {found}: run `make test`")
    return found[0]


@pytest.fixture(scope="module")
def base_root() -> Iterator[Path]:
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (apt-get install debootstrap "
                        "systemd-container)")
    base = Path(tempfile.mkdtemp(prefix="kinesyslog-base-", dir="/var/tmp"))
    try:
        clean_room.debootstrap(base)
        assert not list((base / "usr/bin").glob("python*")), "the clean room has a Python"
        yield base
    finally:
        clean_room.remove_root(base)


@pytest.fixture
def root(base_root: Path) -> Iterator[Path]:
    with clean_room.fresh_root(base_root) as fresh:
        yield fresh


def newer_deb(deb: Path, directory: Path) -> tuple[Path, str]:
    """The same package as a newer version: what an upgrade installs."""
    tree = directory / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, timeout=120)
    control = tree / "DEBIAN" / "control"
    version = re.search(r"^Version: (\S+)$", control.read_text(), re.M).group(1) + "+upgrade1"
    control.write_text(re.sub(r"^Version: \S+$", f"Version: {version}", control.read_text(),
                              flags=re.M))
    newer = directory / f"kinesyslog_{version}.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", "-Zxz", str(tree), str(newer)],
                   check=True, capture_output=True, timeout=300)
    return newer, version


def publish(root: Path, *debs: Path) -> None:
    """The .deb files as the root's local apt repository (build-apt-repo.sh) and its source."""
    repository = root / REPOSITORY.lstrip("/")
    if repository.exists():
        shutil.rmtree(repository)
    subprocess.run([str(ROOT / "packaging" / "build-apt-repo.sh"), str(repository),
                    *map(str, debs)], check=True, capture_output=True, timeout=120)
    (root / "etc/apt/sources.list.d/kinesyslog.list").write_text(
        f"deb [trusted=yes] file:{REPOSITORY} ./\n")


def apt_install(root: Path) -> Path:
    """`apt-get install kinesyslog` in the root from a local repository holding dist's .deb."""
    deb = built("kinesyslog_*.deb")
    publish(root, deb)
    in_root(root, "apt-get", "update", "-q")
    in_root(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", "kinesyslog")
    return deb


def passwd_entry(root: Path, name: str) -> list[str] | None:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    return None


def group_names(root: Path) -> set[str]:
    return {line.split(":")[0] for line in (root / "etc/group").read_text().splitlines()}


def assert_enabled(root: Path) -> None:
    """The multi-user.target.wants link exists and points at the installed unit."""
    target = os.readlink(root / ENABLED_LINK)
    assert target.endswith("/systemd/system/kinesyslog.service"), target
    assert (root / target.lstrip("/")).is_file(), target


def installed_version(root: Path) -> str:
    return in_root(root, "dpkg-query", "-W", "-f", "${Version}", "kinesyslog").stdout


def aws_settings(moto: MotoServer, port: int) -> dict[str, str]:
    return {
        "KINESYSLOG_STREAM": moto.stream,
        "KINESYSLOG_ENDPOINT_URL": moto.endpoint_url,
        "KINESYSLOG_ADDRESS": "127.0.0.1",
        "KINESYSLOG_UDP_PORT": str(port),
        "KINESYSLOG_TCP_PORT": str(port),
        "KINESYSLOG_FLUSH_INTERVAL": "0.5",
        "AWS_ACCESS_KEY_ID": moto.env["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": moto.env["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": moto.env["AWS_DEFAULT_REGION"],
        "AWS_ENDPOINT_URL_STS": moto.endpoint_url,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def messages_in_s3(moto: MotoServer) -> list[str]:
    return [event["message"] for _, _, event in s3_events(moto)]


def wait_delivered(moto: MotoServer, expected: list[str]) -> None:
    def arrived() -> bool:
        return set(expected) <= set(messages_in_s3(moto))

    wait_for(arrived, DELIVERY_TIMEOUT, interval=0.5, message=f"{len(expected)} messages")


def test_apt_install_run_upgrade_purge(root: Path, moto_server: MotoServer,
                                       tmp_path: Path) -> None:
    deb = apt_install(root)

    user = passwd_entry(root, "kinesyslog")
    assert user is not None
    assert (user[5], user[6]) == (SYSTEM_SPOOL_DIR, "/usr/sbin/nologin")
    assert "kinesyslog" in group_names(root)
    spool = os.stat(root / SPOOL)
    assert (oct(spool.st_mode & 0o7777), spool.st_uid, spool.st_gid) == (
        oct(0o750), int(user[2]), int(user[3]))
    assert (root / UNIT).read_text() == (ROOT / "packaging/kinesyslog.service").read_text()
    assert_enabled(root)  # enabled, not started
    assert (root / "etc/default/kinesyslog").is_file()
    assert in_root(root, "/usr/bin/kinesyslog", "--version").stdout == (
        f"kinesyslog, version {__version__}\n")

    # The installed binary, as the kinesyslog user with nothing but its arguments, against
    # moto_server on the host's loopback.
    port = free_ports()
    settings = aws_settings(moto_server, port)
    arguments = [f"--{name[11:].lower().replace('_', '-')}={value}"
                 for name, value in settings.items() if name.startswith("KINESYSLOG_")]
    environment = {name: value for name, value in settings.items()
                   if not name.startswith("KINESYSLOG_")}
    command = nspawn_command(root, "/usr/bin/kinesyslog", user="kinesyslog",
                             env={**environment, "HOME": SYSTEM_SPOOL_DIR})
    relay = Relay([*arguments, "--spool-dir", SYSTEM_SPOOL_DIR], command=command)
    try:
        relay.start()
        udp = "<13>1 2026-11-21T10:00:00.123Z host app 1 - - clean room over udp"
        tcp = "<14>Nov 21 10:00:01 host app: clean room over tcp"
        send_udp("127.0.0.1", port, [udp.encode()])
        send_tcp("127.0.0.1", port, tcp.encode() + b"\n")
        wait_delivered(moto_server, [udp, tcp])
        assert relay.stop() == 0, relay.log
    finally:
        relay.kill()
        clean_room.kill_processes_in(root)

    # Upgrade to a newer build: the operator's edit of the conffile is kept.
    newer, version = newer_deb(deb, tmp_path)
    settings_file = root / "etc/default/kinesyslog"
    settings_file.write_text(settings_file.read_text() + "KINESYSLOG_DEBUG=true\n")
    publish(root, deb, newer)
    in_root(root, "apt-get", "update", "-q")
    in_root(root, "apt-get", "install", "-y", "-q", "kinesyslog")
    assert installed_version(root) == version
    assert settings_file.read_text().endswith("\nKINESYSLOG_DEBUG=true\n")
    assert passwd_entry(root, "kinesyslog") == user
    assert_enabled(root)

    in_root(root, "apt-get", "purge", "-y", "-q", "kinesyslog")
    assert passwd_entry(root, "kinesyslog") is None
    assert "kinesyslog" not in group_names(root)
    for gone in (SPOOL, "etc/default/kinesyslog", "usr/bin/kinesyslog", "usr/lib/kinesyslog",
                 UNIT, ENABLED_LINK):
        assert not os.path.lexists(root / gone), gone


def test_one_file_executable_in_clean_root(root: Path) -> None:
    """The release one-file executable where glibc is 2.31 and there is no Python: as nobody,
    from /, unpacking itself into the root's /tmp."""
    executable = root / "usr/local/bin/kinesyslog"
    shutil.copy2(DIST / "kinesyslog", executable)
    assert in_root(root, "/usr/local/bin/kinesyslog", "--version").stdout == (
        f"kinesyslog, version {__version__}\n")
    nobody = passwd_entry(root, "nobody")
    assert nobody is not None
    output = root / "var/tmp/out"
    output.mkdir()
    os.chown(output, int(nobody[2]), int(nobody[3]))
    port = free_ports()
    relay = Relay(["--output-dir", "/var/tmp/out", "--spool-dir", "/var/tmp/spool",
                   "--address", "127.0.0.1", "--udp-port", str(port), "--tcp-port", str(port),
                   "--flush-interval", "0.5"],
                  command=nspawn_command(root, "/usr/local/bin/kinesyslog", user="nobody"))
    message = "<13>1 2026-11-21T10:00:00.123Z host app 1 - - one file on glibc 2.31"
    try:
        relay.start()
        send_udp("127.0.0.1", port, [message.encode()])
        assert relay.stop() == 0, relay.log
    finally:
        relay.kill()
        clean_room.kill_processes_in(root)
    records = [r for path in output.iterdir() for r in decode_records(path.read_bytes())]
    assert [(group, event["message"]) for group, _, event in events_of(records)] == [
        (f"/kinesyslog/syslog/{port}", message)]


def privileged_port() -> int:
    """A port below 1024 free for UDP and TCP on 127.0.0.1: 514 if it is free."""
    for port in (514, *range(600, 1024)):
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free privileged port")


def service_pid(booted: Booted) -> int:
    return int(booted.run("systemctl", "show", "-p", "MainPID", "--value",
                          "kinesyslog").stdout)


def wait_active(booted: Booted, other_than: int = 0) -> int:
    """Waits until the service is active (Type=notify: READY=1 sent); its main PID."""
    def active() -> bool:
        state = booted.run("systemctl", "is-active", "kinesyslog", check=False).stdout.strip()
        assert state not in ("failed",), booted.run("journalctl", "-u", "kinesyslog",
                                                     "--no-pager", check=False).stdout
        return state == "active" and service_pid(booted) not in (0, other_than)

    wait_for(active, DELIVERY_TIMEOUT, interval=0.5, message="kinesyslog.service active")
    return service_pid(booted)


def test_boot_starts_hardened_service(root: Path, moto_server: MotoServer,
                                      tmp_path: Path) -> None:
    deb = apt_install(root)
    port = privileged_port()
    settings_file = root / "etc/default/kinesyslog"
    settings_file.write_text(settings_file.read_text() + "".join(
        f"{name}={value}\n" for name, value in aws_settings(moto_server, port).items()))
    sent: list[str] = []

    def send(text: str) -> None:
        send_tcp("127.0.0.1", port, text.encode() + b"\n")
        sent.append(text)

    with Booted(root, tmp_path / "boot.log") as booted:
        pid = wait_active(booted)
        status = booted.run("cat", f"/proc/{pid}/status").stdout
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        kinesyslog_uid = passwd_entry(root, "kinesyslog")[2]
        assert fields["Uid"].split()[0] == kinesyslog_uid
        assert fields["NoNewPrivs"] == "1"
        assert fields["Seccomp"] == "2"  # SystemCallFilter
        cap_net_bind_service = f"{1 << 10:016x}"
        assert (fields["CapEff"], fields["CapBnd"]) == (cap_net_bind_service,) * 2
        # systemd 247 applies every option of the unit but PrivateIPC (systemd >= 248), which
        # it skips with a notice. Unit files are parsed before the journal starts at boot, so
        # a reload parses it again where the notices are kept.
        booted.run("systemctl", "daemon-reload")
        journal = booted.run("journalctl", "-b", "--no-pager").stdout
        notices = [line for line in journal.splitlines() if "kinesyslog.service:" in line
                   and re.search(r"[Uu]nknown|[Ii]gnor|[Ff]ailed to parse", line)]
        skipped = {match for line in notices
                   for match in re.findall(r"Unknown key name '(\w+)'", line)}
        assert (skipped, len(notices)) == (NEWER_THAN_SYSTEMD_247, 1), notices

        send_udp("127.0.0.1", port, [b"<13>1 2026-11-21T10:00:00.123Z host app - - - booted"])
        sent.append("<13>1 2026-11-21T10:00:00.123Z host app - - - booted")
        send("<14>Nov 21 10:00:01 host app: privileged port over tcp")
        wait_delivered(moto_server, sent)

        # systemctl stop drains: what was received before it is delivered when it returns.
        burst = [f"<14>Nov 21 10:00:02 host app: burst {n}" for n in range(BURST)]
        send_tcp("127.0.0.1", port, "".join(f"{m}\n" for m in burst).encode())
        sent.extend(burst)
        booted.run("systemctl", "stop", "kinesyslog")
        assert set(sent) <= set(messages_in_s3(moto_server))
        spooled = list((root / SPOOL).glob(f"{SPOOL_RECORD_PREFIX}*{SPOOL_RECORD_SUFFIX}"))
        assert not spooled
        assert booted.run("systemctl", "show", "-p", "Result", "--value",
                          "kinesyslog").stdout == "success\n"

        booted.run("systemctl", "start", "kinesyslog")
        pid = wait_active(booted)
        booted.run("systemctl", "restart", "kinesyslog")
        pid = wait_active(booted, other_than=pid)
        send("<14>Nov 21 10:00:03 host app: after restart")
        wait_delivered(moto_server, sent)

        # An upgrade restarts the running service and keeps the edited settings.
        newer, version = newer_deb(deb, tmp_path)
        publish(root, deb, newer)
        booted.run("apt-get", "update", "-q")
        booted.run("apt-get", "install", "-y", "-q", "kinesyslog")
        assert booted.run("dpkg-query", "-W", "-f", "${Version}", "kinesyslog").stdout == version
        pid = wait_active(booted, other_than=pid)
        assert f"KINESYSLOG_UDP_PORT={port}\n" in settings_file.read_text()
        send("<14>Nov 21 10:00:04 host app: after upgrade")
        wait_delivered(moto_server, sent)

    # Every message exactly once.
    delivered = messages_in_s3(moto_server)
    assert sorted(delivered) == sorted(sent)


def test_rpm_root_install_runs_scriptlets(root: Path) -> None:
    rpm_file = built("kinesyslog-*.rpm")
    if shutil.which("rpm") is None:
        pytest.fail("rpm is not installed (apt-get install rpm)")

    def rpm(*args: str) -> None:
        result = subprocess.run(["rpm", f"--root={root}", *args], capture_output=True,
                                text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stdout + result.stderr

    rpm("--initdb")
    # --nodeps: the root is Debian, its rpm database lists no glibc, shadow-utils or systemd.
    rpm("-i", "--nodeps", str(rpm_file))
    user = passwd_entry(root, "kinesyslog")  # %pre
    assert user is not None
    assert (user[5], user[6]) == (SYSTEM_SPOOL_DIR, "/sbin/nologin")
    assert "kinesyslog" in group_names(root)
    spool = os.stat(root / SPOOL)
    assert (oct(spool.st_mode & 0o7777), spool.st_uid) == (oct(0o750), int(user[2]))
    assert_enabled(root)  # %post
    assert (root / "etc/sysconfig/kinesyslog").is_file()
    assert in_root(root, "/usr/bin/kinesyslog", "--version").stdout == (
        f"kinesyslog, version {__version__}\n")

    rpm("-e", "kinesyslog")
    assert not os.path.lexists(root / ENABLED_LINK)  # %preun
    assert not os.path.lexists(root / "usr/lib/kinesyslog")
