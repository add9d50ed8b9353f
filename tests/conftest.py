import os

import pytest

# the test process runs on native threads too (no eventlet), as the agent does
from computeagent import threads

threads.use_native_threads()

_realstack = {"passed": 0, "skipped": 0, "failed": 0}


def pytest_runtest_logreport(report):
    if "realstack" not in report.keywords:
        return
    if report.when == "call" and report.passed:
        _realstack["passed"] += 1
    elif report.skipped:
        _realstack["skipped"] += 1
    elif report.failed:
        _realstack["failed"] += 1


def pytest_sessionfinish(session, exitstatus):
    """Under CI=true the real-stack tests must have run: a skip, or none at all,
    fails the session."""
    if os.environ.get("CI", "").lower() != "true":
        return
    if session.config.getoption("collectonly", default=False):
        return
    if _realstack["skipped"] or not _realstack["passed"]:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(
        "real-stack tests: %(passed)d passed, %(failed)d failed, %(skipped)d skipped"
        % _realstack)
    if os.environ.get("CI", "").lower() == "true" and (
            _realstack["skipped"] or not _realstack["passed"]):
        terminalreporter.write_line("CI=true: real-stack tests were skipped or did not run:"
                                    " failing", red=True)
