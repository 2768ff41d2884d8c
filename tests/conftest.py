"""Rules for every room of the suite: nothing skipped in CI, and outside CI a loud list of what was skipped.

This file starts nothing: the rooms tests/routers, tests/training and tests/experts need no server. The
gateway's fixtures (scripted upstream, trained router, PostgreSQL, Redis, running gateways) live in
tests/gateway/conftest.py and load only for the gateway's tests. The one plugin named here trains router
families on demand and starts no server; it is shared so a session trains them once for both rooms using them.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from typing import Any  # noqa: E402

import pytest  # noqa: E402

pytest_plugins = ["tests.routers.families"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201
    """In CI a skipped test is a failed one: the PostgreSQL and vLLM paths must really run there."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {report.longrepr}"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Outside CI a missing dataset, server or tool skips a test: say loudly which ones did not run, and why."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if not hasattr(r, "wasxfail")]
    if not skipped:
        return
    by_reason: dict[str, list[str]] = {}
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        by_reason.setdefault(reason.removeprefix("Skipped: "), []).append(report.nodeid)
    write = terminalreporter
    write.write_sep("!", f"{len(skipped)} TESTS DID NOT RUN (skipped): what they check is untested here", red=True, bold=True)
    for reason, nodeids in sorted(by_reason.items(), key=lambda item: -len(item[1])):
        write.write_line(f"{len(nodeids)} skipped because: {reason}", yellow=True, bold=True)
        for nodeid in nodeids:
            write.write_line(f"    {nodeid}", yellow=True)
    write.write_sep("!", "CI (CI=true, .ci/run) fails on any skip; install what is missing to run them here", red=True, bold=True)
