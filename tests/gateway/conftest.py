"""The gateway's fixtures: a scripted upstream, a small trained router, real databases. Only the tests under
tests/gateway load them; the helpers they build on are in support.py."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from bench.upstream import serve_in_thread
from tests.gateway.support import POSTGRES_ADMIN_URL, expert


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
