"""Shared fixtures: a scripted upstream, a small trained router, real databases and a running gateway."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, TypeVar  # noqa: E402

import psycopg  # noqa: E402
import pytest  # noqa: E402
import redis  # noqa: E402
from sqlalchemy import create_engine, select  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from bench.upstream import free_port, serve_in_thread  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.config import GatewayConfig  # noqa: E402
from gateway.migrate import upgrade  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from migrations.schema import DecisionRow  # noqa: E402

_Row = TypeVar("_Row")

# A server PostgreSQL that tests may create and drop databases in (CI starts it; see .ci/run).
POSTGRES_ADMIN_URL = os.environ.get("MOE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

# The real Redis server; each test file that uses it owns one of its numbered databases.
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379

MATH_QUESTION = "Solve for x: 3x + 7 = 22. What is the value of x?"
HISTORY_QUESTION = "Which ancient empire built the Great Wall of China, and during which dynasty was most of it constructed?"


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


@pytest.fixture(scope="session")
def upstream() -> Iterator[str]:
    """Base URL (without /v1) of the scripted OpenAI-compatible upstream."""
    with serve_in_thread() as base:
        yield base


@pytest.fixture(scope="session")
def router_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real embedding-domain router, trained on a small subset of the pool's train split."""
    from training.train import train_router

    out = tmp_path_factory.mktemp("routers") / "embedding-domain"
    train_router("embedding-domain", out, limit=1400)
    return out


def expert(name: str, model: str, api_base: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "model": model, "api_base": api_base, **extra}


def routed_config(experts: list[dict[str, Any]], artifact: Path) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "experts": experts,
            "routers": [{"name": "embedding", "artifact": str(artifact)}],
            "virtual_models": [{"name": "moe-auto", "router": "embedding"}],
        }
    )


@pytest.fixture
def healthy_experts(upstream: str) -> list[dict[str, Any]]:
    """Three healthy experts: maths/science, humanities, and a general one taking every other domain."""
    v1 = f"{upstream}/v1"
    return [
        expert("stem", "echo-stem", v1, price_per_mtok=0.2, system_prompt="STEM",
               domains=["math", "physics", "chemistry", "engineering", "computer science"]),
        expert("humanities", "echo-humanities", v1, price_per_mtok=0.1,
               domains=["history", "philosophy", "law", "psychology"]),
        expert("general", "echo-general", v1, price_per_mtok=0.1,
               domains=["business", "economics", "health", "biology", "other"]),
    ]


@dataclass
class Gateway:
    base_url: str
    settings: Settings

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"


@contextmanager
def running_gateway(config: GatewayConfig, database_url: str, workdir: Path, **settings: Any) -> Iterator[Gateway]:
    """A real gateway on a loopback port (uvicorn in a thread), its decision log at `database_url`."""
    upgrade(database_url)
    merged: dict[str, Any] = {
        "database_url": database_url,
        "moe_spill_dir": workdir / "spill",
        "moe_health_interval_s": 0.5,
        "moe_log_flush_s": 0.05,
        **settings,
    }
    resolved = Settings(**merged)
    with serve_in_thread(create_app(resolved, config), port=free_port()) as base:
        yield Gateway(base, resolved)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'decisions.db'}"


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A fresh database on the real PostgreSQL server for this test session, dropped afterwards."""
    admin = make_url(POSTGRES_ADMIN_URL)
    name = f"moe_test_{uuid.uuid4().hex[:10]}"
    conninfo = admin.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield admin.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """The session's PostgreSQL database, emptied after each test."""
    yield postgres_server_url
    engine = create_engine(postgres_server_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


@contextmanager
def fresh_redis_db(db: int) -> Iterator[str]:
    """The URL of Redis database `db`, empty at the start and emptied again at the end."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    client.flushdb()
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    finally:
        client.flushdb()
        client.close()


def rows(database_url: str, table: type[_Row], order_by: Any) -> list[_Row]:
    """Every row of a table, in the order given."""
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            return list(session.scalars(select(table).order_by(order_by)).all())
    finally:
        engine.dispose()


def decisions(database_url: str) -> list[DecisionRow]:
    """Every decision record (with its expert calls), oldest first."""
    return rows(database_url, DecisionRow, DecisionRow.created_at)


def wait_for(predicate: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
