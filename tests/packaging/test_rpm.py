"""The .rpm from packaging/build-rpm.sh (dist/kinesyslog-*.rpm): metadata, contents, modes,
the %config(noreplace) settings file, scriptlets, rpmlint with packaging/rpm/rpmlintrc, and
the payload unpacked into a scratch root with `rpm -i --root --noscripts`.

Build it first with `make rpm`. Without it the tests skip, except in CI (CI=true)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from kinesyslog import __version__
from kinesyslog.constants import SYSTEM_SPOOL_DIR
from tests.packaging.test_deb import (
    DEFAULT_FILE,
    DIST,
    ONE_FOLDER,
    ROOT,
    UNIT,
    missing,
    newest_glibc,
    run,
)

pytestmark = pytest.mark.e2e

RPMLINTRC = ROOT / "packaging" / "rpm" / "rpmlintrc"
LIB = "/usr/lib/kinesyslog"
# One line per file: flags, mode, owner, group, link target, path.
FILE_FORMAT = ("[%{FILEFLAGS:fflags}\\t%{FILEMODES:perms}\\t%{FILEUSERNAME}\\t"
               "%{FILEGROUPNAME}\\t%{FILELINKTOS}\\t%{FILENAMES}\\n]")


def rpm_version(version: str) -> tuple[str, str]:
    """PEP 440 to rpm (Version, Release): pre-releases sort before the release."""
    base, tag = re.fullmatch(r"(\d+(?:\.\d+)*)\.?(.*)", version).groups()  # type: ignore[union-attr]
    if not tag:
        return base, "1"
    return base, ("1." if tag.startswith("post") else "0.") + tag


@pytest.fixture(scope="module")
def rpm() -> Path:
    if shutil.which("rpm") is None:
        missing("rpm is not installed (apt-get install rpm)")
    rpms = sorted(DIST.glob("kinesyslog-*.rpm"))
    if not rpms:
        missing(f"no {DIST}/kinesyslog-*.rpm: run `make rpm`")
    assert len(rpms) == 1, rpms
    return rpms[0]


def query(rpm: Path, *args: str) -> str:
    return run("rpm", "-qp", "--nosignature", *args, str(rpm)).stdout


def files(rpm: Path) -> dict[str, tuple[str, str, str, str, str]]:
    """{path: (flags, mode, owner, group, link target)}."""
    entries = {}
    for line in query(rpm, "--qf", FILE_FORMAT).splitlines():
        flags, mode, owner, group, target, path = line.split("\t")
        entries[path] = (flags, mode, owner, group, target)
    return entries


def test_rpm_version() -> None:
    assert rpm_version("3.0.0.dev0") == ("3.0.0", "0.dev0")
    assert rpm_version("3.0.0rc1") == ("3.0.0", "0.rc1")
    assert rpm_version("3.0.0.post1") == ("3.0.0", "1.post1")
    assert rpm_version("3.0.0") == ("3.0.0", "1")


def test_metadata(rpm: Path) -> None:
    version, release = rpm_version(__version__)
    arch = run("rpm", "--eval", "%{_arch}").stdout.strip()
    fields = query(rpm, "--qf", "%{NAME}|%{VERSION}|%{RELEASE}|%{ARCH}|%{LICENSE}")
    assert fields == f"kinesyslog|{version}|{release}|{arch}|Apache-2.0"
    assert rpm.name == f"kinesyslog-{version}-{release}.{arch}.rpm"
    requires = [line for line in query(rpm, "--requires").splitlines()
                if not line.startswith("rpmlib(")]
    assert sorted(requires) == sorted([
        "/bin/sh", "/bin/sh", "/bin/sh", "/bin/sh", f"glibc >= {newest_glibc(ONE_FOLDER)}",
        "shadow-utils", "systemd", "systemd", "systemd"])
    # The bundle's libraries are private: nothing but the package itself is provided.
    assert query(rpm, "--provides").splitlines() == [
        f"kinesyslog = {version}-{release}", f"kinesyslog({arch.replace('_', '-')}) = "
        f"{version}-{release}"]


def test_contents(rpm: Path) -> None:
    entries = files(rpm)
    assert entries[f"{LIB}/kinesyslog"] == ("", "-rwxr-xr-x", "root", "root", "")
    assert entries["/usr/bin/kinesyslog"] == ("", "lrwxrwxrwx", "root", "root",
                                              "../lib/kinesyslog/kinesyslog")
    outside = {path: entry for path, entry in entries.items() if not path.startswith(LIB + "/")}
    assert outside == {
        "/etc/sysconfig/kinesyslog": ("cn", "-rw-r--r--", "root", "root", ""),
        "/usr/bin/kinesyslog": ("", "lrwxrwxrwx", "root", "root",
                                "../lib/kinesyslog/kinesyslog"),
        LIB: ("", "drwxr-xr-x", "root", "root", ""),
        "/usr/lib/systemd/system/kinesyslog.service": ("", "-rw-r--r--", "root", "root", ""),
        "/usr/share/licenses/kinesyslog/copyright": ("l", "-rw-r--r--", "root", "root", ""),
        SYSTEM_SPOOL_DIR: ("", "drwxr-x---", "kinesyslog", "kinesyslog", ""),
    }
    assert query(rpm, "--configfiles") == "/etc/sysconfig/kinesyslog\n"
    inside = {path: entry for path, entry in entries.items() if path.startswith(LIB + "/")}
    assert {entry[1][0] for entry in inside.values()} <= {"-", "d"}
    assert {(entry[0], entry[2], entry[3]) for entry in inside.values()} == {
        ("", "root", "root")}
    # Exactly the one-folder build, with the deb's normalised modes.
    built = {str(p.relative_to(ONE_FOLDER)): p for p in ONE_FOLDER.rglob("*")}
    assert {path[len(LIB) + 1:] for path in inside} == set(built)
    for relative, source in built.items():
        expected = "drwxr-xr-x" if source.is_dir() else (
            "-rwxr-xr-x" if relative == "kinesyslog" else "-rw-r--r--")
        assert inside[f"{LIB}/{relative}"][1] == expected, relative


def test_scriptlets(rpm: Path, tmp_path: Path) -> None:
    scripts = {name: query(rpm, "--qf", f"%{{{name}}}")
               for name in ("PREIN", "POSTIN", "PREUN", "POSTUN")}
    assert {name: query(rpm, "--qf", f"%{{{name}PROG}}") for name in scripts} == {
        name: "/bin/sh" for name in scripts}
    assert "useradd -r -g kinesyslog -d /var/spool/kinesyslog" in scripts["PREIN"]
    assert "groupadd -r kinesyslog" in scripts["PREIN"]
    assert "systemctl --no-reload enable kinesyslog.service" in scripts["POSTIN"]
    assert "systemctl --no-reload disable --now kinesyslog.service" in scripts["PREUN"]
    assert "systemctl try-restart kinesyslog.service" in scripts["POSTUN"]
    for name, text in scripts.items():
        script = tmp_path / name
        script.write_text(text)
        run("sh", "-n", str(script))


def test_rpmlint(rpm: Path) -> None:
    if shutil.which("rpmlint") is None:
        missing("rpmlint is not installed (apt-get install rpmlint)")
    result = run("rpmlint", "-r", str(RPMLINTRC), str(rpm), check=False)
    hints = [line for line in result.stdout.splitlines() if re.search(r": [EW]: ", line)]
    assert (result.returncode, hints) == (0, []), result.stdout + result.stderr
    assert " 0 errors, 0 warnings" in result.stdout, result.stdout


def test_payload_unpacks(rpm: Path, tmp_path: Path) -> None:
    """The payload, without scriptlets or dependencies, into a scratch root."""
    root = tmp_path / "root"
    root.mkdir()
    run("rpm", "-i", "--root", str(root), "--dbpath", str(tmp_path / "db"), "--nodeps",
        "--noscripts", "--nosignature", "--ignorearch", str(rpm))
    assert (root / "usr/lib/systemd/system/kinesyslog.service").read_text() == \
        UNIT.read_text()
    assert (root / "etc/sysconfig/kinesyslog").read_text() == DEFAULT_FILE.read_text()
    assert (root / "usr/bin/kinesyslog").resolve() == root / "usr/lib/kinesyslog/kinesyslog"
    assert (root / SYSTEM_SPOOL_DIR.lstrip("/")).is_dir()
    result = run(str(root / "usr/bin/kinesyslog"), "--version")
    assert result.stdout == f"kinesyslog, version {__version__}\n"


def test_unit_reads_both_settings_files() -> None:
    lines = UNIT.read_text().splitlines()
    assert [line for line in lines if line.startswith("EnvironmentFile=")] == [
        "EnvironmentFile=-/etc/default/kinesyslog", "EnvironmentFile=-/etc/sysconfig/kinesyslog"]
