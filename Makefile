# `make test` is the one command that runs every test (CI runs exactly it).
PYTHON ?= python3
VENV ?= .venv
PY = $(VENV)/bin/python

# What deb, rpm and test package: "release" (built in a Debian 11 root, glibc >= 2.31;
# needs root, debootstrap and systemd-nspawn) or "executable" (the host's Python, quicker):
#   make test BUILD=executable
BUILD ?= release

.PHONY: test lint build executable release deb rpm clean

$(VENV)/.installed: pyproject.toml setup.py $(wildcard kinesyslog/_fast/*.pyx kinesyslog/_fast/*.pxd)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,build]'
	touch $@

build: $(VENV)/.installed

lint: build
	$(VENV)/bin/ruff check kinesyslog tests fuzz bench

# dist/kinesyslog (one file) and dist/kinesyslog-dir/ (one folder), from pyinstaller.spec
executable: build
	PYTHON=$(PY) packaging/build-executable.sh

# The same two builds frozen in a Debian 11 root (build/release-root, reused between runs)
release:
	packaging/build-release.sh

# dist/kinesyslog_<version>_<arch>.deb from the one-folder build (needs dpkg-deb, objdump)
deb: build $(BUILD)
	PYTHON=$(PY) packaging/build-deb.sh

# dist/kinesyslog-<version>-<release>.<arch>.rpm from the one-folder build (needs rpmbuild,
# objdump)
rpm: build $(BUILD)
	PYTHON=$(PY) packaging/build-rpm.sh

test: lint $(BUILD) deb rpm
	$(PY) -m pytest -q tests fuzz

clean:
	rm -rf build dist *.egg-info kinesyslog/_fast/*.c kinesyslog/_fast/*.so $(VENV)
