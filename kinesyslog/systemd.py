"""systemd integration: `kinesyslog install` (a unit and its override) and sd_notify.

The unit (``kinesyslog.service``) is rewritten by every install; the relay's settings live in
the drop-in ``kinesyslog.service.d/override.conf`` as ``Environment=`` lines, which is the file
``systemctl edit kinesyslog`` opens. It is written once, with every ``KINESYSLOG_*`` variable
commented out, and never overwritten. (The deb/rpm packages use an EnvironmentFile instead;
a hand-installed unit keeps 2.0.1's override so that ``systemctl edit`` works as it did.)

Choices in the unit:

* ``Type=notify``: the relay sends ``READY=1`` when every listener is bound and the worker
  runs, so ``systemctl start`` returns once it accepts logs (and fails if it does not).
* The spool is ``/var/spool/kinesyslog``, set with ``Environment=KINESYSLOG_SPOOL_DIR``.
  systemd's ``StateDirectory=`` would create it, but only under ``/var/lib``; so an
  ``ExecStartPre=+`` (run as root whatever ``User=`` is) creates it with ``install -d``,
  owned by the service user, before every start. No ``PrivateTmp=``: 2.0.1's unit had it
  with the spool in ``/tmp``, and every stop deleted the records not yet uploaded; a spool or
  ``--output-dir`` an operator points at ``/tmp`` must survive a restart too.
* ``KillMode=mixed``: SIGTERM goes to the relay only, which stops its worker and uploader in
  order (flush, then upload); systemd SIGKILLs what is left after ``TimeoutStopSec``, which is
  the default shutdown timeout plus the relay's own grace for the worker's final flush.
* ``Restart=on-failure`` but not after exit 78 (a configuration error does not fix itself).
* Hardening limited to what the relay cannot trip over: no new privileges, a read-only
  ``/usr`` and ``/etc``, no kernel tunables/modules/cgroup writes, no realtime, no SUID, IP,
  Unix (sd_notify) and netlink (getaddrinfo) sockets only. Not ``MemoryDenyWriteExecute``
  (breaks ctypes/cffi under Python), not ``ProtectHome`` (credentials or certificates may be
  there), not a system-call filter (untested against the frozen binary).
"""

from __future__ import annotations

import enum
import logging
import os
import pwd
import re
import shlex
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TextIO

from kinesyslog.constants import (
    DEFAULT_SHUTDOWN_TIMEOUT,
    EX_CONFIG,
    SYSTEM_SPOOL_DIR,
    SYSTEMD_NOFILE_LIMIT,
    SYSTEMD_STOP_MARGIN,
    SYSTEMD_UNIT_NAME,
)

if TYPE_CHECKING:
    import click

log = logging.getLogger("kinesyslog.systemd")

OVERRIDE_NAME = "override.conf"
# What the unit itself sets; the override shows these values instead of the CLI defaults.
UNIT_ENVIRONMENT: dict[str, str] = {"KINESYSLOG_SPOOL_DIR": SYSTEM_SPOOL_DIR}
_USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*\$?")
_NEEDS_QUOTES = re.compile(r"""[\s"';]""")


class InstallError(Exception):
    """A unit or override could not be written; the message says which file and why."""


def _exec_word(word: str) -> str:
    """One argument of an Exec*= line (systemd.syntax(7): C escapes, % specifiers, $ variables)."""
    text = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{text}"' if not word or _NEEDS_QUOTES.search(word) else text


def _environment_line(name: str, value: str) -> str:
    text = f"{name}={value}".replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'Environment="{text}"'


def _check_user_name(user: str) -> None:
    if not _USER_NAME.fullmatch(user):
        raise ValueError(f"not a valid user name for a systemd unit: {user!r}")


def render_unit(executable: str, user: str | None) -> str:
    """The text of kinesyslog.service.

    ``executable`` is the command that starts kinesyslog, in shell syntax (what
    ``running_executable`` returns); ``listen`` is appended to it.
    """
    words = shlex.split(executable)
    if not words or not os.path.isabs(words[0]):
        raise ValueError(f"the executable must be an absolute path: {executable!r}")
    exec_start = " ".join(_exec_word(word) for word in [*words, "listen"])
    owner = ""
    run_as: list[str] = []
    if user is not None:
        _check_user_name(user)
        owner = f" -o {user}"
        # The capability lets a non-root user bind syslog's port 514.
        run_as = [f"User={user}", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                  "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"]
    lines = [
        "# Written by \"kinesyslog install\", which rewrites it: put settings in",
        f"# {SYSTEMD_UNIT_NAME}.d/{OVERRIDE_NAME} (\"systemctl edit kinesyslog\").",
        "[Unit]",
        "Description=kinesyslog: syslog and GELF relay to Amazon Kinesis Data Firehose",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStartPre=+/usr/bin/install -d -m 0750{owner} {SYSTEM_SPOOL_DIR}",
        f"ExecStart={exec_start}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        _environment_line("KINESYSLOG_SPOOL_DIR", SYSTEM_SPOOL_DIR),
        "RuntimeDirectory=kinesyslog",  # metrics files in memory, never on a full disk
        "RuntimeDirectoryMode=0750",
        *run_as,
        "KillMode=mixed",
        f"TimeoutStopSec={int(DEFAULT_SHUTDOWN_TIMEOUT) + SYSTEMD_STOP_MARGIN}",
        "Restart=on-failure",
        "RestartSec=5",
        f"RestartPreventExitStatus={EX_CONFIG}",
        f"LimitNOFILE={SYSTEMD_NOFILE_LIMIT}",
        "NoNewPrivileges=yes",
        "ProtectSystem=full",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def render_override(variables: list[tuple[str, str]]) -> str:
    """The text of override.conf: every (variable, default) commented out.

    Variables the unit sets (the spool directory) show the unit's value.
    """
    stop_timeout = int(DEFAULT_SHUTDOWN_TIMEOUT) + SYSTEMD_STOP_MARGIN
    lines = [
        "# Settings of kinesyslog.service. \"kinesyslog install\" wrote this file once and never",
        "# overwrites it. Edit it with \"systemctl edit kinesyslog\" (or edit it, then run",
        "# \"systemctl daemon-reload\"), then \"systemctl restart kinesyslog\".",
        "# Uncomment a line and set its value. Options that may be repeated take",
        "# whitespace-separated values, e.g. Environment=\"KINESYSLOG_TCP_PORT=514 1514\".",
        "[Service]",
        "",
        "# AWS credentials and region, if the instance role and the service user's ~/.aws",
        "# do not provide them.",
        "#" + _environment_line("AWS_DEFAULT_REGION", ""),
        "#" + _environment_line("AWS_PROFILE", ""),
        "#" + _environment_line("AWS_ACCESS_KEY_ID", ""),
        "#" + _environment_line("AWS_SECRET_ACCESS_KEY", ""),
        "#" + _environment_line("AWS_CONFIG_FILE", ""),
        "#" + _environment_line("AWS_SHARED_CREDENTIALS_FILE", ""),
        "",
        "# An HTTPS proxy for AWS calls; the instance metadata service must stay direct.",
        "#" + _environment_line("HTTPS_PROXY", ""),
        "#" + _environment_line("NO_PROXY", "169.254.169.254"),
        "",
        "# kinesyslog options: see \"kinesyslog listen --help\". If you move the spool",
        "# directory, create it owned by the service user.",
        *("#" + _environment_line(name, UNIT_ENVIRONMENT.get(name, default))
          for name, default in variables),
        "",
        f"# systemd kills the relay {stop_timeout} s after asking it to stop. With a longer",
        f"# KINESYSLOG_SHUTDOWN_TIMEOUT, keep this above it by {SYSTEMD_STOP_MARGIN} s.",
        f"#TimeoutStopSec={stop_timeout}",
    ]
    return "\n".join(lines) + "\n"


def _default_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return " ".join(_default_text(item) for item in value)
    if isinstance(value, (str, int, os.PathLike)):
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    return ""  # no default (None, or click's UNSET)


def listen_variables(command: click.Command) -> list[tuple[str, str]]:
    """(KINESYSLOG_* variable, default as text) of every visible option of ``command``."""
    import click

    context = click.Context(command)
    variables = []
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str) and not getattr(param, "hidden", False):
            variables.append((envvar, _default_text(param.get_default(context))))
    return variables


def _write_new(path: Path, text: str) -> bool:
    """Writes ``path`` unless it exists; True if it was written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    return True


def _replace(path: Path, text: str) -> None:
    """Writes ``path`` through a temporary file, so a reader never sees half a unit."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def install(executable: str, user: str | None, system_dir: Path,
            variables: list[tuple[str, str]], *, out: TextIO | None = None) -> list[Path]:
    """Writes the unit (always) and its override (only if absent) into ``system_dir``.

    Says what it did on ``out`` (stdout by default) and returns the files it wrote. Raises
    InstallError, with a message naming the file and the fix, if the user does not exist or
    a file cannot be written.
    """
    out = out or sys.stdout
    if user is not None:
        try:
            _check_user_name(user)
            pwd.getpwnam(user)
        except ValueError as error:
            raise InstallError(f"--user: {error}") from None
        except KeyError:
            raise InstallError(f"--user {user}: no such user (create it first, e.g. "
                               f"'useradd --system --no-create-home {user}')") from None
    try:
        unit_text = render_unit(executable, user)
    except ValueError as error:
        raise InstallError(str(error)) from None
    system_dir = Path(system_dir)
    unit = system_dir / SYSTEMD_UNIT_NAME
    override_dir = system_dir / f"{SYSTEMD_UNIT_NAME}.d"
    override = override_dir / OVERRIDE_NAME
    written = []
    target = unit
    try:
        _replace(unit, unit_text)
        written.append(unit)
        out.write(f"Wrote {unit} (runs: {executable} listen)\n")
        target = override
        override_dir.mkdir(mode=0o755, exist_ok=True)
        if _write_new(override, render_override(variables)):
            written.append(override)
            out.write(f"Wrote {override}: configure the relay there with "
                      "'systemctl edit kinesyslog'\n")
        else:
            out.write(f"Kept the existing {override} (install never replaces it)\n")
    except OSError as error:
        hint = ""
        if isinstance(error, PermissionError):
            hint = " (run it as root, or choose another --system-dir)"
        elif not system_dir.is_dir():
            hint = f" ({system_dir} is not a directory; choose an existing --system-dir)"
        raise InstallError(f"cannot write {target}: {error.strerror or error}{hint}") from error
    out.write("Then run: systemctl daemon-reload && systemctl enable --now kinesyslog\n")
    return written


def running_executable() -> str:
    """The command that starts this kinesyslog, in shell syntax, for a unit's ExecStart.

    The PyInstaller binary itself when frozen; else the ``kinesyslog`` console script this
    process was started as (a venv's or pip's, never resolved through symlinks, which would
    leave the venv); else this interpreter with ``-m kinesyslog``.
    """
    if getattr(sys, "frozen", False):
        return shlex.quote(os.path.abspath(sys.executable))
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "kinesyslog":
        found = os.path.abspath(argv0) if os.sep in argv0 else shutil.which(argv0)
        if found and os.path.isfile(found) and os.access(found, os.X_OK):
            return shlex.quote(os.path.abspath(found))
    return shlex.join([os.path.abspath(sys.executable), "-m", "kinesyslog"])


class _From(enum.Enum):
    ENVIRONMENT = 0


class Notifier:
    """sd_notify(3): state changes sent as datagrams to systemd's NOTIFY_SOCKET.

    ``Notifier()`` reads NOTIFY_SOCKET when created; ``Notifier(None)`` is disabled. A path
    starting with ``@`` is in the abstract namespace. Without a socket every method does
    nothing; a failed send is logged once at debug level and never raised, because the relay
    must run the same whether or not systemd listens.
    """

    def __init__(self, socket_path: str | Literal[_From.ENVIRONMENT] | None = _From.ENVIRONMENT,
                 ) -> None:
        if socket_path is _From.ENVIRONMENT:
            socket_path = os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        self._socket: socket.socket | None = None
        self._failed = False
        if not socket_path:
            return
        if socket_path.startswith("@"):
            self._address = "\0" + socket_path[1:]
        elif socket_path.startswith("/"):
            self._address = socket_path
        else:
            log.debug("NOTIFY_SOCKET=%r is not a Unix socket path; not notifying", socket_path)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self) -> None:
        self.notify("READY=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        # One line: a newline would start another assignment.
        self.notify("STATUS=" + " ".join(text.splitlines()))

    def notify(self, state: str) -> bool:
        """Sends ``state`` (newline-separated assignments); True if it was sent."""
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self._socket.sendto(state.encode(), self._address)
        except OSError as error:
            if not self._failed:
                self._failed = True
                log.debug("sd_notify to %r failed: %s", self._address, error)
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
