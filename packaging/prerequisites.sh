#!/bin/sh
# What `make test` needs from the system, before anything is built.
#
# As root with apt-get: installs the Debian packages that are missing (nothing when all are
# there). Otherwise: stops with one line naming the packages when the build itself cannot
# work (a compiler, Python headers, venv), and names in one line the tools whose tests will
# be skipped. Prints the BUILD that `make test` should use: "release" (a Debian 11 root,
# needs root, debootstrap and systemd-nspawn) or "executable" (the host's Python).
set -eu

# command:package pairs. Build: gcc, make, Python headers and venv. Packaging: dpkg-deb,
# dpkg-scanpackages, lintian, objdump (the glibc floor), systemd-analyze, adduser, rpmbuild,
# rpmlint. Release build and clean-room tests: debootstrap, systemd-nspawn. Interoperability
# tests (tests/interop): real senders the relay must accept, and HAProxy in front of it:
# logger (util-linux), rsyslogd with its TLS driver (a module, hence a file), haproxy.
# syslog-ng conflicts with rsyslog as a package: its tests fetch it with `apt-get download`
# and unpack it under build/interop (tests/interop/syslog_ng.py), which needs apt's lists.
BUILD_TOOLS="gcc:gcc make:make"
PACKAGING_TOOLS="dpkg-deb:dpkg dpkg-scanpackages:dpkg-dev lintian:lintian objdump:binutils
systemd-analyze:systemd adduser:adduser rpmbuild:rpm rpmlint:rpmlint"
RELEASE_TOOLS="debootstrap:debootstrap systemd-nspawn:systemd-container"
INTEROP_TOOLS="logger:bsdutils rsyslogd:rsyslog haproxy:haproxy"
INTEROP_FILES="/usr/lib/*/rsyslog/lmnsd_gtls.so:rsyslog-gnutls"
# rsyslogd (and debootstrap) live in /usr/sbin, not on a normal user's PATH
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

python=${PYTHON:-python3}
missing() {  # the packages of the commands in $1 that are not on PATH
    for pair in $1; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || printf '%s ' "${pair#*:}"
    done
}
missing_files() {  # the packages of the files (glob patterns) in $1 that do not exist
    for pair in $1; do
        # shellcheck disable=SC2086  # the pattern must expand
        set -- ${pair%%:*}
        [ -e "$1" ] || printf '%s ' "${pair#*:}"
    done
}
python_missing() {
    "$python" -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(
        os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null \
        || printf 'python3-dev '
    "$python" -c 'import ensurepip, venv' 2>/dev/null || printf 'python3-venv '
}

is_root=false
[ "$(id -u)" = 0 ] && is_root=true
needed="$(missing "$BUILD_TOOLS")$(python_missing)$(missing "$PACKAGING_TOOLS")$(missing "$INTEROP_TOOLS")$(missing_files "$INTEROP_FILES")"
if $is_root; then needed="$needed$(missing "$RELEASE_TOOLS")"; fi

if [ -n "$needed" ] && $is_root && command -v apt-get >/dev/null 2>&1; then
    echo "prerequisites: installing $needed" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    # shellcheck disable=SC2086  # a list of package names
    apt-get install -y -qq --no-install-recommends $needed >/dev/null
    needed=""
fi

if $is_root && command -v apt-get >/dev/null 2>&1 \
        && ! ls /var/lib/apt/lists/*Packages* >/dev/null 2>&1; then
    echo "prerequisites: apt has no package lists (syslog-ng is fetched from them): apt-get update" >&2
    apt-get update -qq >&2
fi

cannot_build="$(missing "$BUILD_TOOLS")$(python_missing)"
if [ -n "$cannot_build" ]; then
    echo "prerequisites: cannot build; install these Debian packages first: apt-get install $cannot_build" >&2
    exit 1
fi
skipped="$(missing "$PACKAGING_TOOLS")$(missing "$INTEROP_TOOLS")$(missing_files "$INTEROP_FILES")"
if ! $is_root; then
    echo "prerequisites: not root: the release build in a Debian 11 root, installing the packages and the tests that mount file systems are skipped (BUILD=executable)" >&2
elif [ -n "$(missing "$RELEASE_TOOLS")" ]; then
    skipped="$skipped$(missing "$RELEASE_TOOLS")"
fi
if [ -n "$skipped" ]; then
    echo "prerequisites: missing $skipped- the package builds and tests needing them (packaging, interop) are skipped (apt-get install $skipped)" >&2
fi

if $is_root && [ -z "$(missing "$RELEASE_TOOLS")" ]; then echo release; else echo executable; fi
