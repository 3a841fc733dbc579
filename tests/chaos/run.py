"""The chaos suite of kinesyslog (issue #11): the relay under kills, outages, a full disk,
upload faults, SIGTERM and bad input, with every numbered message accounted for.

Two forms of the same scenarios (tests/chaos/test_*.py):

* The CI form, the default: each scenario once, with seconds of load (2,000 messages/s over
  TCP and 100 datagrams/s over UDP, 6 kills, 6 s outages, 4 s faults), about 3.5 minutes on
  2 cores (the budget is 8). It runs with the other tests, or alone:

      .venv/bin/pytest tests/chaos
      .venv/bin/python -m tests.chaos.run

* The long form: 24 kills (at least 20), 30 s outages, 15 s faults, 10,000 messages/s over
  TCP (4 connections) and 200 datagrams/s over UDP, 7,800 idle connections (5,000 from one
  address), 30 s of bad input. It takes about 10 minutes:

      .venv/bin/python -m tests.chaos.run --long
      KINESYSLOG_CHAOS=long .venv/bin/pytest tests/chaos      # the same, through pytest

Options: ``--seed N`` (or KINESYSLOG_CHAOS_SEED=N) repeats scenario 1's random kill moments
(the seed is printed at each run); ``--results FILE`` keeps the rows as JSON lines; anything
after ``--`` goes to pytest (e.g. ``-- -k outage``). Scenario 3 (a full spool file system)
mounts a tmpfs and is skipped unless run as root.

Each scenario prints one ``CHAOS RESULT |`` row and asserts that nothing the relay had read
was lost; pytest's summary and this runner end with the Markdown table of all rows:
scenario, verdict, load, duration, sent, delivered, duplicates, still spooled, lost, UDP
datagrams dropped (counted by the relay: not lost), unread (sent but never read by the
relay: in kernel buffers at a SIGKILL), peak RSS and PSS summed over the relay's processes,
time to recover, notes. See tests/chaos/harness.py for the accounting rules.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from tests.chaos import harness

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    import pytest

    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--long", action="store_true", help="the long form")
    parser.add_argument("--seed", type=int, help="scenario 1's random seed")
    parser.add_argument("--results", type=Path, help="append the rows here (JSON lines)")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    options = parser.parse_args(argv)

    os.environ[harness.MODE_ENV] = "long" if options.long else "ci"
    if options.seed is not None:
        os.environ[harness.SEED_ENV] = str(options.seed)
    results = options.results
    if results is None:
        handle, name = tempfile.mkstemp(prefix="kinesyslog-chaos-", suffix=".jsonl")
        os.close(handle)
        results = Path(name)
    os.environ[harness.RESULTS_ENV] = str(results)
    code = pytest.main([str(ROOT / "tests" / "chaos"), "--rootdir", str(ROOT), "-s",
                        "-p", "no:cacheprovider", *options.pytest_args])
    rows = harness.load_results(results)
    if options.results is None:
        results.unlink(missing_ok=True)
    print(f"\n## kinesyslog chaos suite, {harness.profile().name} form\n")
    print(harness.markdown_table(rows))
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
