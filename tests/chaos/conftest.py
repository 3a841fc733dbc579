"""The chaos suite's marker, profile fixture and summary table.

The CI form runs with `pytest tests/chaos`; `KINESYSLOG_CHAOS=long` (or `python -m
tests.chaos.run --long`) selects the long form. See tests/chaos/run.py.
"""

from __future__ import annotations

import pytest

from tests.chaos import harness


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: chaos scenarios against the real relay (tests/chaos; "
                   "KINESYSLOG_CHAOS=long for the long form)")


@pytest.fixture
def prof() -> harness.Profile:
    harness.raise_fd_limit()
    return harness.profile()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    recorded = any(result.test == report.nodeid for result in harness.RESULTS)
    if recorded and (report.when == "call" or report.failed):
        harness.record_outcome(report.nodeid, report.outcome)
    elif report.when == "call" and report.failed and "test_harness" not in report.nodeid:
        message = getattr(report.longrepr, "reprcrash", None)
        harness.record_failure(report.nodeid, report.nodeid.rpartition("::")[2],
                               message.message if message else str(report.longrepr))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if harness.RESULTS:
        terminalreporter.section(f"chaos results ({harness.profile().name} form)")
        terminalreporter.write_line(harness.markdown_table(harness.RESULTS))
