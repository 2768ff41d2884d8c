"""The dashboard's fixtures: a gateway whose maths expert fails, opened with an admin key and two tenants' keys; a
headless Chromium; a gateway that requires keys with its router versions in PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, sync_playwright
from sqlalchemy import create_engine

from gateway.migrate import upgrade
from migrations.router_versions import RouterVersions
from tests.gateway.support import Gateway, expert, routed_config, running_gateway
from tests.gateway.ui.support import PRICES, STEM, Dashboard, open_dashboard

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; `make test` installs it when missing
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture
def failing_stem(upstream: str) -> list[dict[str, Any]]:
    """The maths expert answers 500 (the router ranks it first for a maths question; another expert answers);
    the other two answer."""
    v1 = f"{upstream}/v1"
    return [
        expert("stem", "fail500-stem", v1, price_per_mtok=PRICES["stem"], domains=STEM),
        expert(
            "humanities",
            "echo-humanities",
            v1,
            price_per_mtok=PRICES["humanities"],
            domains=["history", "philosophy", "law", "psychology"],
        ),
        expert(
            "general",
            "echo-general",
            v1,
            price_per_mtok=PRICES["general"],
            domains=["business", "economics", "health", "biology", "other"],
        ),
    ]


@pytest.fixture
def dashboard(
    failing_stem: list[dict[str, Any]], router_artifact: Path, database_url: str, tmp_path: Path
) -> Iterator[Dashboard]:
    with open_dashboard(failing_stem, router_artifact, database_url, tmp_path) as opened:
        yield opened


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: CI must run the browser tests (`make test` installs chromium)")
        pytest.skip(f"{CHROMIUM} is missing (Debian's chromium package: `apt-get install -y chromium`)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def gateway(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, postgres_url: str, tmp_path: Path
) -> Iterator[Gateway]:
    """A gateway that requires keys, with its decision log, keys and router versions in PostgreSQL."""
    upgrade(postgres_url)
    RouterVersions(create_engine(postgres_url)).register("embedding", router_artifact, status="active")
    with running_gateway(
        routed_config(healthy_experts, router_artifact),
        postgres_url,
        tmp_path,
        moe_require_api_key=True,
        moe_key_cache_ttl_s=0.5,
        moe_router_poll_s=0.2,
        moe_router_versions_dir=tmp_path / "versions",
    ) as gw:
        yield gw
