# Shared by build-deb.sh, build-rpm.sh and build-release.sh (sourced, from the repository
# root): finds the Python that imports kinesyslog, checks the one-folder build, and sets GLIBC
# to the newest glibc symbol version any bundled ELF file needs.
# $SCRIPT: the calling script's name, for error messages.

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
BUILT=dist/kinesyslog-dir
if [ ! -x "$BUILT/kinesyslog" ]; then
    echo "$SCRIPT: $BUILT/kinesyslog is missing: run packaging/build-executable.sh" >&2
    exit 1
fi
GLIBC=$(find "$BUILT" -type f \( -name '*.so*' -o -name kinesyslog \) -exec objdump -T {} + \
    2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)
if [ -z "$GLIBC" ]; then
    echo "$SCRIPT: found no GLIBC_ symbol versions (is objdump installed?)" >&2
    exit 1
fi
