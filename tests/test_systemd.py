"""`kinesyslog install` (unit and override) and sd_notify against real datagram sockets."""

from __future__ import annotations

import io
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kinesyslog.cli import listen
from kinesyslog.systemd import (
    InstallError,
    Notifier,
    install,
    listen_variables,
    render_override,
    render_unit,
    running_executable,
)

EXECUTABLE = "/usr/bin/kinesyslog"
VARIABLES = [("KINESYSLOG_STREAM", ""), ("KINESYSLOG_TCP_PORT", ""),
             ("KINESYSLOG_TLS_PORT", "6514"), ("KINESYSLOG_SPOOL_DIR", "/tmp"),
             ("KINESYSLOG_GROUP_PREFIX", '/odd "100%" \\ prefix')]


def service_lines(unit: str) -> list[str]:
    return unit.split("[Service]\n", 1)[1].split("\n\n", 1)[0].splitlines()


# The unit


def test_unit_with_a_user() -> None:
    unit = render_unit(EXECUTABLE, "kinesyslog")
    assert "[Unit]\n" in unit
    assert "After=network-online.target\n" in unit
    assert unit.endswith("[Install]\nWantedBy=multi-user.target\n")
    assert service_lines(unit) == [
        "Type=notify",
        "NotifyAccess=main",
        "ExecStartPre=+/usr/bin/install -d -m 0750 -o kinesyslog /var/spool/kinesyslog",
        "ExecStart=/usr/bin/kinesyslog listen",
        "ExecReload=/bin/kill -HUP $MAINPID",
        'Environment="KINESYSLOG_SPOOL_DIR=/var/spool/kinesyslog"',
        "RuntimeDirectory=kinesyslog",
        "RuntimeDirectoryMode=0750",
        "User=kinesyslog",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "KillMode=mixed",
        "TimeoutStopSec=90",
        "Restart=on-failure",
        "RestartSec=5",
        "RestartPreventExitStatus=78",
        "LimitNOFILE=65536",
        "NoNewPrivileges=yes",
        "ProtectSystem=full",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    ]
    assert "PrivateTmp" not in unit
    assert "/tmp" not in unit


def test_unit_as_root() -> None:
    lines = service_lines(render_unit(EXECUTABLE, None))
    assert "ExecStartPre=+/usr/bin/install -d -m 0750 /var/spool/kinesyslog" in lines
    assert not [line for line in lines if line.startswith(("User=", "AmbientCapabilities=",
                                                           "CapabilityBoundingSet="))]


def test_exec_start_quoting() -> None:
    command = shlex.join(["/opt/my venv/bin/python", "-m", "kinesyslog"])
    assert "ExecStart=\"/opt/my venv/bin/python\" -m kinesyslog listen\n" in render_unit(
        command, None)
    assert "ExecStart=/opt/100%%/$$HOME/kinesyslog listen\n" in render_unit(
        "/opt/100%/$HOME/kinesyslog", None)


@pytest.mark.parametrize("executable", ["", "kinesyslog", "bin/kinesyslog -m x"])
def test_unit_needs_an_absolute_executable(executable: str) -> None:
    with pytest.raises(ValueError, match="absolute path"):
        render_unit(executable, None)


@pytest.mark.parametrize("user", ["", "a b", 'x"y', "root\nExecStart=/bin/sh"])
def test_unit_rejects_odd_user_names(user: str) -> None:
    with pytest.raises(ValueError, match="not a valid user name"):
        render_unit(EXECUTABLE, user)


# The override


def test_override_comments_out_every_variable() -> None:
    text = render_override(VARIABLES)
    lines = text.splitlines()
    assert "[Service]" in lines
    assert lines.index("[Service]") < lines.index('#Environment="KINESYSLOG_STREAM="')
    for line in ('#Environment="KINESYSLOG_STREAM="',
                 '#Environment="KINESYSLOG_TCP_PORT="',
                 '#Environment="KINESYSLOG_TLS_PORT=6514"',
                 # The unit's spool, not the command line's default:
                 '#Environment="KINESYSLOG_SPOOL_DIR=/var/spool/kinesyslog"',
                 '#Environment="KINESYSLOG_GROUP_PREFIX=/odd \\"100%%\\" \\\\ prefix"',
                 '#Environment="NO_PROXY=169.254.169.254"',
                 "#TimeoutStopSec=90"):
        assert line in lines
    settings = [line for line in lines if line and not line.startswith("#")]
    assert settings == ["[Service]"]


def test_listen_variables_cover_every_visible_option() -> None:
    variables = dict(listen_variables(listen))
    visible = [p for p in listen.params if not getattr(p, "hidden", False)]
    assert len(variables) == len(visible)
    assert variables["KINESYSLOG_STREAM"] == ""
    assert variables["KINESYSLOG_ADDRESS"] == "0.0.0.0"
    assert variables["KINESYSLOG_TCP_PORT"] == ""
    assert variables["KINESYSLOG_TLS_PORT"] == "6514"
    assert variables["KINESYSLOG_GELF"] == "false"
    assert variables["KINESYSLOG_SHUTDOWN_TIMEOUT"] == "30"
    assert variables["KINESYSLOG_MAX_MESSAGE_SIZE"] == "65536"
    assert "KINESYSLOG_DEBUG_ASYNCIO" not in variables


# install


def test_install_twice_keeps_the_edited_override(tmp_path: Path) -> None:
    unit = tmp_path / "kinesyslog.service"
    override = tmp_path / "kinesyslog.service.d" / "override.conf"
    out = io.StringIO()
    assert install(EXECUTABLE, "nobody", tmp_path, VARIABLES, out=out) == [unit, override]
    assert unit.read_text() == render_unit(EXECUTABLE, "nobody")
    assert override.read_text() == render_override(VARIABLES)
    assert oct(unit.stat().st_mode & 0o777) == "0o644"
    assert f"Wrote {override}" in out.getvalue()

    edited = override.read_text().replace('#Environment="KINESYSLOG_TCP_PORT="',
                                          'Environment="KINESYSLOG_TCP_PORT=514"')
    override.write_text(edited)
    unit.write_text("stale\n")
    out = io.StringIO()
    assert install("/opt/kinesyslog/kinesyslog", None, tmp_path, VARIABLES, out=out) == [unit]
    assert unit.read_text() == render_unit("/opt/kinesyslog/kinesyslog", None)
    assert override.read_text() == edited
    assert f"Kept the existing {override}" in out.getvalue()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kinesyslog.service",
                                                          "kinesyslog.service.d"]


def test_install_into_a_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(InstallError) as failure:
        install(EXECUTABLE, None, missing, VARIABLES, out=io.StringIO())
    assert str(failure.value) == (
        f"cannot write {missing}/kinesyslog.service: No such file or directory ({missing} is "
        "not a directory; choose an existing --system-dir)")


def test_install_into_a_file(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(InstallError) as failure:
        install(EXECUTABLE, None, file, VARIABLES, out=io.StringIO())
    assert str(failure.value) == (f"cannot write {file}/kinesyslog.service: Not a directory "
                                  f"({file} is not a directory; choose an existing --system-dir)")


def test_install_when_the_override_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "kinesyslog.service.d").write_text("a file where the drop-in directory goes")
    with pytest.raises(InstallError) as failure:
        install(EXECUTABLE, None, tmp_path, VARIABLES, out=io.StringIO())
    assert str(failure.value) == (
        f"cannot write {tmp_path}/kinesyslog.service.d/override.conf: File exists")


def test_install_without_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("kinesyslog.systemd.tempfile.mkstemp", denied)  # root may write anywhere
    with pytest.raises(InstallError) as failure:
        install(EXECUTABLE, None, tmp_path, VARIABLES, out=io.StringIO())
    assert str(failure.value) == (f"cannot write {tmp_path}/kinesyslog.service: Permission denied"
                                  " (run it as root, or choose another --system-dir)")


def test_install_for_an_unknown_user(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match=r"^--user no-such-user-kinesyslog: no such user"):
        install(EXECUTABLE, "no-such-user-kinesyslog", tmp_path, VARIABLES, out=io.StringIO())
    assert list(tmp_path.iterdir()) == []


def test_install_with_a_relative_executable(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="absolute path"):
        install("kinesyslog", None, tmp_path, VARIABLES, out=io.StringIO())


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (apt-get install systemd)")
@pytest.mark.parametrize("uncomment", [False, True])
def test_installed_unit_passes_systemd_analyze_verify(tmp_path: Path, uncomment: bool) -> None:
    # An executable that exists here: verify checks that ExecStart= can run.
    install(running_executable(), "nobody", tmp_path, listen_variables(listen),
            out=io.StringIO())
    if uncomment:  # every setting in the override, to check its quoting too
        override = tmp_path / "kinesyslog.service.d" / "override.conf"
        override.write_text(re.sub(r"(?m)^#(Environment|TimeoutStopSec)=", r"\1=",
                                   override.read_text()))
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "kinesyslog.service")],
                            capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if "Special user nobody configured" not in line]
    assert (result.returncode, complaints) == (0, [])


# running_executable


def test_frozen_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", "/usr/lib/kinesyslog/kinesyslog")
    assert running_executable() == "/usr/lib/kinesyslog/kinesyslog"


@pytest.fixture
def console_script(tmp_path: Path) -> Path:
    """A venv-like bin/kinesyslog that is a symlink, as some installs make it."""
    real = tmp_path / "real-script"
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    bin_dir = tmp_path / "my venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "kinesyslog").symlink_to(real)
    return bin_dir / "kinesyslog"


def test_console_script_by_path(monkeypatch: pytest.MonkeyPatch, console_script: Path) -> None:
    monkeypatch.chdir(console_script.parent.parent)
    monkeypatch.setattr(sys, "argv", ["bin/kinesyslog", "install"])
    # Absolute, quoted for the space, and not resolved to the symlink's target.
    assert running_executable() == shlex.quote(str(console_script))
    assert f'ExecStart="{console_script}" listen\n' in render_unit(running_executable(), None)


def test_console_script_found_on_path(monkeypatch: pytest.MonkeyPatch,
                                      console_script: Path) -> None:
    monkeypatch.setenv("PATH", str(console_script.parent))
    monkeypatch.setattr(sys, "argv", ["kinesyslog", "install"])
    assert running_executable() == shlex.quote(str(console_script))


def test_python_module_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["/src/kinesyslog/__main__.py", "install"])
    assert running_executable() == shlex.join([os.path.abspath(sys.executable), "-m",
                                               "kinesyslog"])


def test_console_script_missing_falls_back(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "kinesyslog")])
    assert running_executable().endswith(" -m kinesyslog")


# sd_notify


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def test_notifier_sends_ready_status_and_stopping(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier(path)
    assert notifier.enabled
    notifier.ready()
    notifier.status("1200 msg/s\n3 connections")
    notifier.stopping()
    assert [sock.recv(4096) for _ in range(3)] == [
        b"READY=1", b"STATUS=1200 msg/s 3 connections", b"STOPPING=1"]
    notifier.close()


def test_notifier_reads_notify_socket(monkeypatch: pytest.MonkeyPatch,
                                      receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    Notifier().ready()
    Notifier.from_environment({"NOTIFY_SOCKET": path}).stopping()
    assert [sock.recv(4096) for _ in range(2)] == [b"READY=1", b"STOPPING=1"]


def test_notifier_abstract_socket() -> None:
    name = f"kinesyslog-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        Notifier("@" + name).ready()
        assert sock.recv(4096) == b"READY=1"


def test_notifier_without_socket_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    for notifier in (Notifier(), Notifier(None), Notifier(""), Notifier("relative/path")):
        assert not notifier.enabled
        assert notifier.notify("READY=1") is False
        notifier.ready()
        notifier.status("x")
        notifier.stopping()
        assert notifier._socket is None


def test_notifier_send_failure_is_logged_once(tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    with caplog.at_level(logging.DEBUG, logger="kinesyslog.systemd"):
        assert notifier.notify("READY=1") is False
        notifier.status("still fine")
        notifier.stopping()
    assert len(caplog.records) == 1
    assert caplog.records[0].levelno == logging.DEBUG
    assert "sd_notify" in caplog.records[0].getMessage()
