"""A gateway routing to the healthy scripted experts, and the anthropic SDK pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.gateway.support import Gateway, routed_config, running_gateway


@pytest.fixture
def gateway(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> Iterator[Gateway]:
    with running_gateway(routed_config(healthy_experts, router_artifact), sqlite_url, tmp_path) as gw:
        yield gw


@pytest.fixture
def client(gateway: Gateway) -> anthropic.Anthropic:
    # Anthropic's SDKs take the root URL and add /v1 themselves.
    return anthropic.Anthropic(base_url=gateway.base_url, api_key="unused", max_retries=0)
