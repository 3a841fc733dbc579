#!/bin/sh
# The release build: dist/kinesyslog (one file) and dist/kinesyslog-dir/ (one folder) frozen
# in a Debian 11 (bullseye) root, so they need nothing newer than glibc 2.31 and run on
# Amazon Linux 2023, RHEL 9 and every Debian/Ubuntu since 2020.
#
# Needs root, debootstrap and systemd-nspawn (apt-get install debootstrap systemd-container)
# and the network (Debian mirror, PyPI). The root, with OpenSSL and CPython built in it
# (packaging/release/root-python.sh, ~10 minutes), is kept in build/release-root and reused
# while that script is unchanged; each build then takes a couple of minutes.
# $DEBIAN_MIRROR overrides http://deb.debian.org/debian.
set -eu

cd "$(dirname "$0")/.."
REPO=$(pwd)
ROOT=$REPO/build/release-root
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
STAMP=$ROOT/.python-ready
KEY=$(sha256sum packaging/release/root-python.sh | cut -d' ' -f1)

for tool in debootstrap systemd-nspawn; do
    if ! command -v "$tool" >/dev/null; then
        echo "build-release.sh: $tool is missing (apt-get install debootstrap systemd-container)" >&2
        exit 1
    fi
done
if [ "$(id -u)" != 0 ]; then
    echo "build-release.sh: needs root (debootstrap, systemd-nspawn); use packaging/build-executable.sh for a local build" >&2
    exit 1
fi

# The host's pip settings (an index mirror, a CA bundle for a TLS-inspecting proxy) apply
# inside the root too.
PIP_BINDS=""
for path in /etc/pip.conf /etc/ssl/certs/ca-certificates.crt /opt/wheels /opt/pypi /opt/pypi-more; do
    if [ -e "$path" ]; then PIP_BINDS="$PIP_BINDS --bind-ro=$path"; fi
done

in_root() {
    # --keep-unit/--register=no: no systemd or machined needed on the host. nspawn mounts
    # /proc and friends in its own namespace; nothing stays mounted under $ROOT afterwards.
    # shellcheck disable=SC2086
    systemd-nspawn --quiet --register=no --keep-unit --pipe --directory="$ROOT" \
        --bind-ro="$REPO:/src" $PIP_BINDS "$@"
}

if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$KEY" ]; then
    if grep -q " $ROOT" /proc/mounts; then
        echo "build-release.sh: something is mounted under $ROOT; not removing it" >&2
        exit 1
    fi
    rm -rf "$ROOT"
    mkdir -p "$(dirname "$ROOT")"
    echo "build-release.sh: debootstrap bullseye into $ROOT"
    debootstrap --variant=minbase bullseye "$ROOT" "$MIRROR" >"$REPO/build/release-debootstrap.log"
    echo "build-release.sh: building OpenSSL and CPython in the root (about 10 minutes)"
    in_root --setenv=DEBIAN_MIRROR="$MIRROR" /bin/sh /src/packaging/release/root-python.sh
    test -x "$ROOT/opt/python/bin/python3.11" || {
        echo "build-release.sh: CPython was not built in $ROOT" >&2; exit 1; }
    echo "$KEY" >"$STAMP"
fi

mkdir -p dist
in_root --bind="$REPO/dist:/out" /bin/sh /src/packaging/release/root-build.sh
if [ ! -x dist/kinesyslog ]; then
    echo "build-release.sh: dist/kinesyslog was not built" >&2
    exit 1
fi
SCRIPT=build-release.sh
. packaging/common.sh  # checks the one-folder build, sets GLIBC
echo "release build: dist/kinesyslog $(du -h dist/kinesyslog | cut -f1), needs glibc >= $GLIBC"
