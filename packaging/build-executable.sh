#!/bin/sh
# Builds dist/kinesyslog (one file) and dist/kinesyslog-dir/ (one folder) from pyinstaller.spec
# with the Python kinesyslog is installed in: $PYTHON, else .venv/bin/python, else python3.
set -eu

cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

rm -rf dist/kinesyslog dist/kinesyslog-dir
"$PYTHON" -m PyInstaller --clean --noconfirm --log-level WARN \
    --distpath dist --workpath build/pyinstaller pyinstaller.spec

for built in dist/kinesyslog dist/kinesyslog-dir/kinesyslog; do
    if [ ! -x "$built" ]; then
        echo "build-executable.sh: $built was not built" >&2
        exit 1
    fi
done
echo "one-file   dist/kinesyslog:      $(du -h dist/kinesyslog | cut -f1)"
echo "one-folder dist/kinesyslog-dir/: $(du -sh dist/kinesyslog-dir | cut -f1)"
