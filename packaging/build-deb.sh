#!/bin/sh
# Builds dist/kinesyslog_<version>_<arch>.deb from the one-folder build (dist/kinesyslog-dir/,
# made by build-executable.sh) with dpkg-deb from a staged tree; no debhelper needed.
# $PYTHON (else .venv/bin/python, else python3) must import kinesyslog, for its version.
# $DEB_MAINTAINER overrides the Maintainer field.
set -eu

cd "$(dirname "$0")/.."
SCRIPT=build-deb.sh
. packaging/common.sh

# PEP 440 to Debian: pre-releases sort before the release with "~" (3.0.0.dev0 -> 3.0.0~dev0,
# 3.0.0rc1 -> 3.0.0~rc1), post-releases after it with "+".
VERSION=$("$PYTHON" -c '
import re
from kinesyslog import __version__ as v
v = re.sub(r"\.?(dev|a|b|rc)", r"~\1", v, count=1)
print(re.sub(r"\.?post", "+post", v))')
ARCH=$(dpkg --print-architecture)

MAINTAINER=${DEB_MAINTAINER:-kinesyslog maintainers <kinesyslog@example.org>}

STAGE=build/deb/kinesyslog
rm -rf "$STAGE"
install -d -m 0755 "$STAGE/DEBIAN" "$STAGE/usr/lib" "$STAGE/usr/bin" \
    "$STAGE/lib/systemd/system" "$STAGE/etc/default" "$STAGE/usr/share/doc/kinesyslog"
cp -a "$BUILT" "$STAGE/usr/lib/kinesyslog"
# Normalise modes: executables and directories 0755, everything else 0644.
find "$STAGE/usr/lib/kinesyslog" -type d -exec chmod 0755 {} +
find "$STAGE/usr/lib/kinesyslog" -type f -exec chmod 0644 {} +
chmod 0755 "$STAGE/usr/lib/kinesyslog/kinesyslog"
ln -s ../lib/kinesyslog/kinesyslog "$STAGE/usr/bin/kinesyslog"
install -m 0644 packaging/kinesyslog.service "$STAGE/lib/systemd/system/kinesyslog.service"
install -m 0644 packaging/kinesyslog.default "$STAGE/etc/default/kinesyslog"
install -m 0644 packaging/deb/copyright "$STAGE/usr/share/doc/kinesyslog/copyright"
sed -e "s/@VERSION@/$VERSION/" -e "s/@MAINTAINER@/$MAINTAINER/" \
    -e "s/@DATE@/$(date -R -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}")/" \
    packaging/deb/changelog.in | gzip -9 -n >"$STAGE/usr/share/doc/kinesyslog/changelog.gz"
chmod 0644 "$STAGE/usr/share/doc/kinesyslog/changelog.gz"
install -d -m 0755 "$STAGE/usr/share/lintian/overrides"
install -m 0644 packaging/deb/lintian-overrides "$STAGE/usr/share/lintian/overrides/kinesyslog"

install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$STAGE/DEBIAN/"
install -m 0644 packaging/deb/conffiles "$STAGE/DEBIAN/conffiles"
SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s/@VERSION@/$VERSION/" -e "s/@ARCH@/$ARCH/" -e "s/@GLIBC@/$GLIBC/" \
    -e "s/@INSTALLED_SIZE@/$SIZE/" \
    -e "s/@MAINTAINER@/$MAINTAINER/" \
    packaging/deb/control.in >"$STAGE/DEBIAN/control"
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
    | xargs -0 md5sum) >"$STAGE/DEBIAN/md5sums"
chmod 0644 "$STAGE/DEBIAN/md5sums" "$STAGE/DEBIAN/control"

DEB="dist/kinesyslog_${VERSION}_${ARCH}.deb"
rm -f dist/kinesyslog_*.deb
dpkg-deb --build --root-owner-group -Zxz "$STAGE" "$DEB" >/dev/null
echo "deb        $DEB: $(du -h "$DEB" | cut -f1) (libc6 >= $GLIBC)"
