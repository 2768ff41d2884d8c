"""What the gateway's test files import: questions, configs, a running gateway, the real databases' URLs,
reading the decision log, waiting for a condition, issuing a key, a router artifact under another version. The
fixtures built on these are in conftest.py."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import redis
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from bench.upstream import free_port, serve_in_thread
from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.decisions.log import make_engine
from gateway.keys.store import CreatedKey, KeyStore, NewKey
from gateway.migrate import upgrade
from gateway.settings import Settings
from migrations.schema import DecisionRow

_Row = TypeVar("_Row")

# A server PostgreSQL that tests may create and drop databases in (CI starts it; see .ci/run).
POSTGRES_ADMIN_URL = os.environ.get("MOE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")

# The real Redis server; each test file that uses it owns one of its numbered databases.
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379

MATH_QUESTION = "Solve for x: 3x + 7 = 22. What is the value of x?"
HISTORY_QUESTION = "Which ancient empire built the Great Wall of China, and during which dynasty was most of it constructed?"


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
        "moe_files_dir": workdir / "files",  # Batch API uploads, outputs and journals
        "moe_health_interval_s": 0.5,
        "moe_log_flush_s": 0.05,
        **settings,
    }
    resolved = Settings(**merged)
    with serve_in_thread(create_app(resolved, config), port=free_port()) as base:
        yield Gateway(base, resolved)


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


def issue_key(database_url: str, *, name: str = "test", tenant: str = "acme", **limits: Any) -> CreatedKey:
    engine = make_engine(database_url)
    try:
        return KeyStore(engine).create(NewKey(name=name, tenant=tenant, **limits))
    finally:
        engine.dispose()


def retagged(artifact: Path, directory: Path, version: str) -> Path:
    """The same trained router under another version string: a new version the router header tells apart."""
    shutil.copytree(artifact, directory)
    manifest = json.loads((directory / "router.json").read_text())
    (directory / "router.json").write_text(json.dumps({**manifest, "version": version}))
    return directory
