# `make test` is the one command that runs every test (CI runs exactly it).
PYTHON ?= python3
VENV ?= .venv
PY = $(VENV)/bin/python

# What deb, rpm and test package: "release" (built in a Debian 11 root, glibc >= 2.31;
# needs root, debootstrap and systemd-nspawn) or "executable" (the host's Python, quicker).
# By default `make test` picks release as root and executable otherwise, after
# packaging/prerequisites.sh installed (as root) or named what is missing:
#   make test BUILD=executable
ifeq ($(origin BUILD), undefined)
BUILD_CHOSEN_BY_TEST := yes
BUILD := $(shell [ "$$(id -u)" = 0 ] && command -v debootstrap >/dev/null \
	&& command -v systemd-nspawn >/dev/null && echo release || echo executable)
endif

.PHONY: test test-with lint build executable release deb rpm clean

$(VENV)/.installed: pyproject.toml setup.py $(wildcard kinesyslog/_fast/*.pyx kinesyslog/_fast/*.pxd)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,build]'
	touch $@

build: $(VENV)/.installed

# ruff; mypy on the package (pyproject.toml); stubtest: the .pyi stubs match the compiled modules
lint: build
	$(VENV)/bin/ruff check kinesyslog tests fuzz bench
	$(VENV)/bin/mypy
	$(PY) -m mypy.stubtest --ignore-disjoint-bases --allowlist tests/stubtest-allowlist.txt \
		$(patsubst kinesyslog/_fast/%.pyx,kinesyslog._fast.%,$(wildcard kinesyslog/_fast/*.pyx))

# dist/kinesyslog (one file) and dist/kinesyslog-dir/ (one folder), from pyinstaller.spec
executable: build
	PYTHON=$(PY) packaging/build-executable.sh

# The same two builds frozen in a Debian 11 root (build/release-root, reused between runs)
release:
	packaging/build-release.sh

# dist/kinesyslog_<version>_<arch>.deb from the one-folder build (needs dpkg-deb, objdump;
# without them it says so and the .deb tests skip)
deb: build $(BUILD)
	@if command -v dpkg-deb >/dev/null && command -v objdump >/dev/null; then \
		PYTHON=$(PY) packaging/build-deb.sh; else echo "deb: skipped (no dpkg-deb or objdump)"; fi

# dist/kinesyslog-<version>-<release>.<arch>.rpm from the one-folder build (needs rpmbuild,
# objdump; without them it says so and the .rpm tests skip)
rpm: build $(BUILD)
	@if command -v rpmbuild >/dev/null && command -v objdump >/dev/null; then \
		PYTHON=$(PY) packaging/build-rpm.sh; else echo "rpm: skipped (no rpmbuild or objdump)"; fi

test:
	@found=$$(PYTHON=$(PYTHON) packaging/prerequisites.sh) || exit 1; \
	build=$(BUILD); [ -z "$(BUILD_CHOSEN_BY_TEST)" ] || build=$$found; \
	$(MAKE) --no-print-directory test-with BUILD=$$build

test-with: lint $(BUILD) deb rpm
	$(PY) -m pytest -q tests fuzz

clean:
	rm -rf build dist *.egg-info kinesyslog/_fast/*.c kinesyslog/_fast/*.so $(VENV)
