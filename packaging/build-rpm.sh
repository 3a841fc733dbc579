#!/bin/sh
# Builds dist/kinesyslog-<version>-<release>.<arch>.rpm from the one-folder build
# (dist/kinesyslog-dir/, made by build-executable.sh) with rpmbuild -bb and
# packaging/rpm/kinesyslog.spec, in a private _topdir under build/rpm.
# $PYTHON (else .venv/bin/python, else python3) must import kinesyslog, for its version.
# $RPM_PACKAGER overrides the Packager tag.
set -eu

cd "$(dirname "$0")/.."
SCRIPT=build-rpm.sh
. packaging/common.sh

# PEP 440 to rpm: a pre-release goes into a Release below 1 so that it sorts before the
# release (3.0.0.dev0 -> 3.0.0-0.dev0, 3.0.0rc1 -> 3.0.0-0.rc1, 3.0.0 -> 3.0.0-1),
# a post-release above it (3.0.0.post1 -> 3.0.0-1.post1).
VR=$("$PYTHON" -c '
import re
from kinesyslog import __version__ as v
base, sep, tag = re.match(r"(\d+(?:\.\d+)*)(\.?)(.*)", v).groups()
tag = re.sub(r"[^A-Za-z0-9.]", "", tag)
print(base, ("1." + tag if tag.startswith("post") else "0." + tag) if tag else "1")')
VERSION=${VR% *}
RELEASE=${VR#* }

PACKAGER=${RPM_PACKAGER:-kinesyslog maintainers <kinesyslog@example.org>}

TOP=$(pwd)/build/rpm
rm -rf "$TOP"
mkdir -p "$TOP"
rpmbuild -bb --quiet \
    --define "_topdir $TOP" \
    --define "_rpmdir $TOP/RPMS" \
    --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
    --define "ksl_root $(pwd)" \
    --define "ksl_version $VERSION" \
    --define "ksl_release $RELEASE" \
    --define "ksl_glibc $GLIBC" \
    --define "ksl_packager $PACKAGER" \
    packaging/rpm/kinesyslog.spec

rm -f dist/kinesyslog-*.rpm
mv "$TOP"/RPMS/kinesyslog-*.rpm dist/
RPM=$(ls dist/kinesyslog-*.rpm)
echo "rpm        $RPM: $(du -h "$RPM" | cut -f1) (glibc >= $GLIBC)"
