#!/bin/sh
# Runs inside the Debian 11 build root (see build-release.sh): builds OpenSSL and CPython
# 3.11 into /opt/python from Debian 12's maintained source packages (bookworm, whose point
# releases carry the security fixes), fetched and verified against the Debian archive key by
# `apt-get source`. OpenSSL gets all of Debian's patches. CPython gets its security and
# upstream bug-fix patches only: the others adapt it to Debian's own layout (multiarch,
# dist-packages, no ensurepip) and break a plain `make install`. Linked against Debian 11's
# glibc 2.31, so what is frozen from them runs on any newer glibc.
set -eu

PREFIX=/opt/python
JOBS=$(nproc)
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
apt-get install -y -qq --no-install-recommends build-essential dpkg-dev perl xz-utils patch \
    libffi-dev zlib1g-dev libbz2-dev liblzma-dev uuid-dev >/dev/null
cat >/etc/apt/sources.list.d/bookworm-src.list <<LIST
deb-src ${DEBIAN_MIRROR:-http://deb.debian.org/debian} bookworm main
LIST
apt-get update -qq

rm -rf /build/python-src && mkdir -p /build/python-src && cd /build/python-src
chown _apt /build/python-src  # apt downloads as _apt
apt-get source -qq --only-source openssl >/dev/null
apt-get source -qq --only-source --download-only python3.11 >/dev/null
dpkg-source -x --skip-patches python3.11_*.dsc >/dev/null

cd /build/python-src/openssl-3.*/
./Configure --prefix="$PREFIX" --libdir=lib --openssldir=/usr/lib/ssl shared no-tests \
    "-Wl,-rpath,$PREFIX/lib" >/dev/null
make -s -j"$JOBS" >/dev/null
make -s install_sw >/dev/null

cd /build/python-src/python3.11-3.11.*/
grep -E '^(CVE-|[0-9]{4}-3\.11-|relfile-nullptr-dereference|frame_dealloc-crash|shutdown-deadlock)' \
        debian/patches/series | while read -r patch _; do
    patch -p1 -s <"debian/patches/$patch"
done
# A backported fix (CVE-2026-4224) makes pyexpat.c use internal headers; Debian builds it
# through Modules/Setup, which defines what they need, setup.py does not. As in 3.12:
sed -i '1i #ifndef Py_BUILD_CORE_BUILTIN\n#  define Py_BUILD_CORE_MODULE 1\n#endif' Modules/pyexpat.c
./configure -q --prefix="$PREFIX" --enable-shared --with-openssl="$PREFIX" \
    --with-openssl-rpath=auto "LDFLAGS=-Wl,-rpath,$PREFIX/lib"
make -s -j"$JOBS" >/dev/null 2>&1 || make -j1
make -s install >/dev/null

"$PREFIX/bin/python3.11" - <<PY
import ssl, sys, zlib, lzma, bz2, ctypes, uuid, pyexpat, _decimal, _elementtree  # noqa: F401
print(sys.version.split()[0], ssl.OPENSSL_VERSION)
PY
rm -rf /build/python-src
