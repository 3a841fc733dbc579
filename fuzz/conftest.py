"""Hypothesis profiles for the fuzzers.

"ci" (the default) keeps every fuzzer together well under a minute; set
KINESYSLOG_FUZZ_EXAMPLES=<n> to select "long", which runs n examples per fuzzer.
"""

from __future__ import annotations

import os

from hypothesis import settings

CI_EXAMPLES = 150

settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=None, print_blob=True)

_long_examples = os.environ.get("KINESYSLOG_FUZZ_EXAMPLES")
if _long_examples:
    settings.register_profile(
        "long", max_examples=int(_long_examples), deadline=None, print_blob=True
    )
    settings.load_profile("long")
else:
    settings.load_profile("ci")
