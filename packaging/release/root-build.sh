#!/bin/sh
# Runs inside the Debian 11 build root (see build-release.sh) with the repository mounted
# read-only at /src and the host's dist/ at /out: installs kinesyslog into a fresh venv of
# /opt/python, freezes it with packaging/build-executable.sh and copies both builds to /out.
set -eu

rm -rf /build/kinesyslog /build/venv
mkdir -p /build/kinesyslog
# Sources only: no venv, build outputs or compiled extensions from the host.
tar -C /src --exclude=./.venv --exclude=./build --exclude=./dist --exclude=./.git \
    --exclude='*.so' --exclude='./kinesyslog/_fast/*.c' --exclude='*.egg-info' \
    --exclude='__pycache__' -cf - . | tar -C /build/kinesyslog -xf -
/opt/python/bin/python3.11 -m venv /build/venv
/build/venv/bin/python -m pip install -q --upgrade pip
# Editable, as on the host, so the spec finds the extensions next to the sources.
/build/venv/bin/python -m pip install -q -e '/build/kinesyslog[build]'

cd /build/kinesyslog
PYTHON=/build/venv/bin/python packaging/build-executable.sh
rm -rf /out/kinesyslog /out/kinesyslog-dir
cp -a dist/kinesyslog dist/kinesyslog-dir /out/
