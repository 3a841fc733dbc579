#!/bin/sh
# Runs inside the Debian 11 build root (see build-release.sh): builds OpenSSL and CPython
# 3.11 into /opt/python from Debian 12's maintained source packages (bookworm, whose point
# releases carry the security fixes), verified against the Debian archive key and unpacked
# with Debian's patches by `apt-get source`. Linked against Debian 11's glibc 2.31, so what
# is frozen from them runs on any newer glibc.
set -eu

PREFIX=/opt/python
JOBS=$(nproc)
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
apt-get install -y -qq --no-install-recommends build-essential dpkg-dev perl xz-utils \
    libffi-dev zlib1g-dev libbz2-dev liblzma-dev uuid-dev >/dev/null
cat >/etc/apt/sources.list.d/bookworm-src.list <<LIST
deb-src ${DEBIAN_MIRROR:-http://deb.debian.org/debian} bookworm main
LIST
apt-get update -qq

rm -rf /build/python-src && mkdir -p /build/python-src && cd /build/python-src
apt-get source -qq --only-source openssl python3.11 >/dev/null

cd /build/python-src/openssl-3.*/
./Configure --prefix="$PREFIX" --libdir=lib --openssldir=/usr/lib/ssl shared no-tests \
    no-docs "-Wl,-rpath,$PREFIX/lib" >/dev/null
make -s -j"$JOBS" >/dev/null
make -s install_sw >/dev/null

cd /build/python-src/python3.11-3.11.*/
./configure -q --prefix="$PREFIX" --enable-shared --with-openssl="$PREFIX" \
    --with-openssl-rpath=auto "LDFLAGS=-Wl,-rpath,$PREFIX/lib"
make -s -j"$JOBS" >/dev/null 2>&1 || make -j1
make -s install >/dev/null

"$PREFIX/bin/python3.11" - <<PY
import ssl, sys, zlib, lzma, bz2, ctypes, uuid  # noqa: F401  (the modules must exist)
print(sys.version.split()[0], ssl.OPENSSL_VERSION)
PY
rm -rf /build/python-src
