"""Hypothesis profiles for the fuzzers.

"ci" (the default, what `make test` and CI run): 1000 examples per fuzzer, all of them
together about 1.5 minutes on a 2-core machine, inside CI's 3-minute budget for them. Set
KINESYSLOG_FUZZ_EXAMPLES=<n> to select "long", which runs n examples per fuzzer.
"""

from __future__ import annotations

import os

from hypothesis import settings

CI_EXAMPLES = 1000

settings.register_profile("ci", max_examples=CI_EXAMPLES, deadline=None, print_blob=True)

_long_examples = os.environ.get("KINESYSLOG_FUZZ_EXAMPLES")
if _long_examples:
    settings.register_profile(
        "long", max_examples=int(_long_examples), deadline=None, print_blob=True
    )
    settings.load_profile("long")
else:
    settings.load_profile("ci")
