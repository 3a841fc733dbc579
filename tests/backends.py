"""The two implementations of the parsers the unit tests run against (issue #12: two
implementations, one test suite): the Cython extensions in kinesyslog/_fast/ and the
pure-Python references in tests/reference/.

The `backend` fixture (tests/conftest.py) gives each test that takes it one Backend per
implementation, with the ids "cython" and "reference". KINESYSLOG_TEST_BACKEND selects them:
"cython", "reference" or "both" (the default). Tests of the extensions' internals (memory,
buffer growth, tracemalloc) do not take the fixture and always run against Cython.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType

from kinesyslog._fast import events as cython_events
from kinesyslog._fast import framing as cython_framing
from kinesyslog._fast import gelf_chunks, gelf_payload, json_scan
from kinesyslog._fast import proxy as cython_proxy
from kinesyslog._fast import syslog as cython_syslog
from tests.reference import events as reference_events
from tests.reference import framing as reference_framing
from tests.reference import gelf as reference_gelf
from tests.reference import proxy as reference_proxy
from tests.reference import syslog as reference_syslog

ENVIRONMENT_VARIABLE = "KINESYSLOG_TEST_BACKEND"


def _combined(name: str, *modules: ModuleType, **extra: object) -> ModuleType:
    """One namespace of the public names of several modules (the GELF API of the Cython
    extensions lives in four: gelf_chunks, gelf_payload, json_scan and framing)."""
    combined = ModuleType(name)
    for module in modules:
        for attribute in dir(module):
            if not attribute.startswith("_"):
                setattr(combined, attribute, getattr(module, attribute))
    for attribute, value in extra.items():
        setattr(combined, attribute, value)
    return combined


cython_gelf = _combined("kinesyslog._fast GELF", gelf_chunks, gelf_payload, json_scan,
                        GelfStreamFramer=cython_framing.GelfStreamFramer)


@dataclass(frozen=True)
class Backend:
    """One implementation: the modules of kinesyslog/_fast/<name>.pyi's API."""

    name: str
    framing: ModuleType
    gelf: ModuleType
    proxy: ModuleType
    syslog: ModuleType
    events: ModuleType

    def __repr__(self) -> str:
        return self.name


CYTHON = Backend("cython", cython_framing, cython_gelf, cython_proxy, cython_syslog,
                 cython_events)
REFERENCE = Backend("reference", reference_framing, reference_gelf, reference_proxy,
                    reference_syslog, reference_events)
BACKENDS = {"cython": [CYTHON], "reference": [REFERENCE], "both": [CYTHON, REFERENCE]}


def selected() -> list[Backend]:
    """The backends KINESYSLOG_TEST_BACKEND names (both by default)."""
    choice = os.environ.get(ENVIRONMENT_VARIABLE, "both").strip().lower() or "both"
    if choice not in BACKENDS:
        raise ValueError(f"{ENVIRONMENT_VARIABLE}={choice!r}: expected one of "
                         f"{', '.join(BACKENDS)}")
    return BACKENDS[choice]
