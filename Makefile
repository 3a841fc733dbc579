# `make test` is the one command that runs every test (CI runs exactly it).
PYTHON ?= python3
VENV ?= .venv
PY = $(VENV)/bin/python

.PHONY: test lint build clean

$(VENV)/.installed: pyproject.toml setup.py $(wildcard kinesyslog/_fast/*.pyx kinesyslog/_fast/*.pxd)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

build: $(VENV)/.installed

lint: build
	$(VENV)/bin/ruff check kinesyslog tests fuzz bench

test: lint
	$(PY) -m pytest -q tests fuzz

clean:
	rm -rf build dist *.egg-info kinesyslog/_fast/*.c kinesyslog/_fast/*.so $(VENV)
