"""A gateway whose experts sit behind a spy that keeps every chat completion they received."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench import upstream as scripted
from bench.upstream import serve_in_thread
from tests.gateway.support import Gateway, expert, routed_config, running_gateway


@pytest.fixture(scope="module")
def sent() -> Iterator[list[dict[str, Any]]]:
    """The chat completions the experts received, in order (emptied before each test)."""
    yield []


@pytest.fixture(autouse=True)
def _fresh_spy(sent: list[dict[str, Any]]) -> None:
    sent.clear()


@pytest.fixture(scope="module")
def spy(sent: list[dict[str, Any]]) -> Iterator[str]:
    async def chat(request: Request) -> Response:
        sent.append(await request.json())  # Starlette keeps the parsed body: the script reads the same
        return await scripted.chat(request)

    app = Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/v1/models", scripted.models)]
    )
    with serve_in_thread(app) as base:
        yield f"{base}/v1"


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('responses') / 'gateway.db'}"


@pytest.fixture(scope="module")
def gateway(
    spy: str, router_artifact: Path, database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    experts = [
        expert(
            "stem",
            "echo-stem",
            spy,
            system_prompt="STEM",
            domains=["math", "physics", "chemistry", "engineering", "computer science"],
        ),
        expert("humanities", "echo-humanities", spy, domains=["history", "philosophy", "law", "psychology"]),
        expert("general", "echo-general", spy, domains=["business", "economics", "health", "biology", "other"]),
    ]
    with running_gateway(routed_config(experts, router_artifact), database, tmp_path_factory.mktemp("gw")) as gw:
        yield gw


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
