"""The client's sampling and tool fields reach the expert, through the gateway and litellm, with their values.

The expert is the scripted upstream behind a recorder that keeps every request body it receives.
"""

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

from bench import upstream
from gateway.config import GatewayConfig
from tests.gateway.support import Gateway, expert, running_gateway

TOOL = {"type": "function", "function": {"name": "weather", "description": "today's weather",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
# Ordinary values, none of them a default an expert would assume anyway.
FIELDS: dict[str, Any] = {
    "tools": [TOOL], "tool_choice": "auto", "seed": 7, "stop": ["\n\n", "END"], "top_p": 0.9, "temperature": 0.3,
    "presence_penalty": 0.5, "frequency_penalty": 0.25, "response_format": {"type": "text"},
    "logit_bias": {"50256": -100}, "logprobs": True, "top_logprobs": 2, "parallel_tool_calls": False, "n": 1,
    "user": "tester",
}


class Recorder:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def chat(self, request: Request) -> Response:
        self.bodies.append(await request.json())
        return await upstream.chat(request)  # request.json() is cached: the same body

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"]),
                                 Route("/v1/models", upstream.models)])


@pytest.fixture
def recorded(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[Gateway, Recorder]]:
    recorder = Recorder()
    with upstream.serve_in_thread(recorder.app()) as base:
        config = GatewayConfig.model_validate({"experts": [expert("general", "echo-general", f"{base}/v1")]})
        with running_gateway(config, sqlite_url, tmp_path) as gw:
            yield gw, recorder


@pytest.mark.parametrize("stream", [False, True])
def test_sampling_and_tool_fields_reach_the_expert(recorded: tuple[Gateway, Recorder], stream: bool) -> None:
    gw, recorder = recorded
    client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="general", messages=[{"role": "user", "content": "Weather in Paris?"}], stream=stream,
        max_completion_tokens=32, **FIELDS,
    )
    if stream:
        list(reply)
    [body] = recorder.bodies
    assert {name: body.get(name) for name in FIELDS} == FIELDS
    assert body["max_tokens"] == 32 and body["model"] == "echo-general" and body.get("stream", False) is stream
