#!/bin/sh
# Usage: build-apt-repo.sh DIR [DEB...]
# Makes DIR a flat apt repository holding the given .deb files (default: dist/kinesyslog_*.deb)
# with its Packages and Packages.gz index, so that the line
#     deb [trusted=yes] file:DIR ./
# in /etc/apt/sources.list.d/ lets `apt-get install kinesyslog` install from it (air-gapped
# hosts). DIR must be an absolute path for that line; the repository is not signed.
set -eu

if [ $# -lt 1 ]; then
    echo "usage: $0 DIR [DEB...]" >&2
    exit 2
fi
DIR=$1
shift
if [ $# -eq 0 ]; then
    set -- "$(cd "$(dirname "$0")/.." && pwd)"/dist/kinesyslog_*.deb
fi
for deb in "$@"; do
    if [ ! -f "$deb" ]; then
        echo "build-apt-repo.sh: $deb not found: run packaging/build-deb.sh" >&2
        exit 1
    fi
done

mkdir -p "$DIR"
cp "$@" "$DIR/"
cd "$DIR"
dpkg-scanpackages --multiversion . /dev/null >Packages 2>/dev/null
gzip -9 -n -c Packages >Packages.gz
echo "apt repository $(pwd): deb [trusted=yes] file:$(pwd) ./"
