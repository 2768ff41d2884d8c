"""count_tokens, x-api-key keys, and bad requests and expert failures as errors in Anthropic's shape."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from gateway.config import GatewayConfig
from gateway.decisions.log import make_engine
from gateway.keys.store import KeyStore, NewKey
from gateway.messages.tokens import CHARS_PER_TOKEN, IMAGE_TOKENS, MESSAGE_TOKENS
from tests.gateway.messages.support import HI, LOOKUP
from tests.gateway.support import MATH_QUESTION, Gateway, decisions, expert, routed_config, running_gateway, wait_for


# -- count_tokens --------------------------------------------------------------------------------------------
def test_count_tokens_estimates_without_routing(client: anthropic.Anthropic, sqlite_url: str) -> None:
    def count(model: str = "moe-auto", **params: Any) -> int:
        return client.messages.count_tokens(model=model, **params).input_tokens

    question = "x" * 40
    plain = count(messages=[{"role": "user", "content": question}])
    assert plain == math.ceil(40 / CHARS_PER_TOKEN) + MESSAGE_TOKENS
    with_system = count(system="be brief", messages=[{"role": "user", "content": question}])
    assert with_system == math.ceil(48 / CHARS_PER_TOKEN) + 2 * MESSAGE_TOKENS
    # A tool counts as its chat function's JSON.
    tool = json.dumps(
        {"name": "lookup", "description": LOOKUP["description"], "parameters": LOOKUP["input_schema"]},
        separators=(",", ":"),
    )
    with_tool = count(messages=[{"role": "user", "content": question}], tools=[LOOKUP])
    assert with_tool == math.ceil((40 + len(tool)) / CHARS_PER_TOKEN) + MESSAGE_TOKENS
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 4000}}
    with_image = count(messages=[{"role": "user", "content": [image, {"type": "text", "text": question}]}])
    assert with_image == plain + IMAGE_TOKENS  # an image's base64 is no text
    conversation = count(
        messages=[
            {"role": "user", "content": question},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "y" * 20}]},
        ],
        tools=[LOOKUP],
    )
    # The call's name and arguments ("lookup", "{}") and the result's text count; the result is a message of its own.
    assert conversation == math.ceil((40 + len("lookup{}") + 20 + len(tool)) / CHARS_PER_TOKEN) + 3 * MESSAGE_TOKENS

    with pytest.raises(anthropic.NotFoundError) as info:
        count(messages=[{"role": "user", "content": "hi"}], model="no-such-model")
    assert info.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The model `no-such-model` does not exist."},
    }
    assert decisions(sqlite_url) == []


# -- keys ----------------------------------------------------------------------------------------------------
def test_x_api_key_authenticates(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    config = routed_config(healthy_experts, router_artifact)
    with running_gateway(config, sqlite_url, tmp_path, moe_require_api_key=True) as gw:
        engine = make_engine(sqlite_url)
        try:
            key = KeyStore(engine).create(NewKey(name="claude-code", tenant="acme"))
        finally:
            engine.dispose()
        good = anthropic.Anthropic(base_url=gw.base_url, api_key=key.key, max_retries=0)
        message = good.messages.create(model="moe-auto", max_tokens=16, messages=[{"role": "user", "content": "hi"}])
        assert good.messages.count_tokens(model="moe-auto", messages=[{"role": "user", "content": "hi"}]).input_tokens

        bad = anthropic.Anthropic(base_url=gw.base_url, api_key="sk-wrong", max_retries=0)
        for attempt in (
            lambda: bad.messages.create(model="moe-auto", max_tokens=16, messages=[{"role": "user", "content": "hi"}]),
            lambda: bad.messages.count_tokens(model="moe-auto", messages=[{"role": "user", "content": "hi"}]),
        ):
            with pytest.raises(anthropic.AuthenticationError) as info:
                attempt()
            assert info.value.status_code == 401
            assert info.value.body["type"] == "error"  # type: ignore[index]
            assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        anonymous = httpx.post(
            f"{gw.v1}/messages",
            json={"model": "moe-auto", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"

        wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the one answered request's record")
        [record] = decisions(sqlite_url)
        assert record.id == message.id.removeprefix("msg_") and record.api_key_id == key.id
        assert record.tenant == "acme"


# -- errors --------------------------------------------------------------------------------------------------
BAD_BODIES = {
    "missing max_tokens": {"model": "moe-auto", "messages": HI},
    "max_tokens a string": {"model": "moe-auto", "max_tokens": "16", "messages": HI},
    "max_tokens zero": {"model": "moe-auto", "max_tokens": 0, "messages": HI},
    "messages a string": {"model": "moe-auto", "max_tokens": 16, "messages": "hi"},
    "no messages": {"model": "moe-auto", "max_tokens": 16, "messages": []},
    "too many messages": {"model": "moe-auto", "max_tokens": 16, "messages": HI * 4097},
    "a system role": {"model": "moe-auto", "max_tokens": 16, "messages": [{"role": "system", "content": "hi"}]},
    "temperature over 1": {"model": "moe-auto", "max_tokens": 16, "messages": HI, "temperature": 1.5},
    "stop_sequences a string": {"model": "moe-auto", "max_tokens": 16, "messages": HI, "stop_sequences": "x"},
    "extended thinking": {
        "model": "moe-auto",
        "max_tokens": 16,
        "messages": HI,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
    },
    "a server tool": {
        "model": "moe-auto",
        "max_tokens": 16,
        "messages": HI,
        "tools": [{"type": "web_search_20250305", "name": "web_search"}],
    },
    "a tool without a schema": {"model": "moe-auto", "max_tokens": 16, "messages": HI, "tools": [{"name": "x"}]},
    "tool_choice without tools": {
        "model": "moe-auto",
        "max_tokens": 16,
        "messages": HI,
        "tool_choice": {"type": "any"},
    },
    "tool_choice naming no tool": {
        "model": "moe-auto",
        "max_tokens": 16,
        "messages": HI,
        "tools": [LOOKUP],
        "tool_choice": {"type": "tool", "name": "clock"},
    },
    "a thinking block": {
        "model": "moe-auto",
        "max_tokens": 16,
        "messages": [{"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"}]}],
    },
    "a tool_use block from the user": {
        "model": "moe-auto",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "lookup", "input": {}}]}],
    },
    "a document": {
        "model": "moe-auto",
        "max_tokens": 16,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}],
            }
        ],
    },
    "an image file source": {
        "model": "moe-auto",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}],
    },
    "MCP servers": {"model": "moe-auto", "max_tokens": 16, "messages": HI, "mcp_servers": [{"type": "url"}]},
    "more chat messages than chat takes": {
        "model": "moe-auto",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}] * 256}]
        * 17,
    },
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_requests_are_400s_in_anthropics_shape(gateway: Gateway, sqlite_url: str, body: dict[str, Any]) -> None:
    response = httpx.post(f"{gateway.v1}/messages", json=body, timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()
    assert set(error) == {"type", "error"} and error["type"] == "error"
    assert set(error["error"]) == {"type", "message"} and error["error"]["type"] == "invalid_request_error"
    assert decisions(sqlite_url) == []  # refused before routing


def test_unparseable_json_and_unknown_paths_are_in_anthropics_shape(gateway: Gateway) -> None:
    for response, status in (
        (httpx.post(f"{gateway.v1}/messages", content=b"{not json", timeout=30), 400),
        (httpx.post(f"{gateway.v1}/messages/count_tokens", json={"model": "moe-auto"}, timeout=30), 400),
        (httpx.get(f"{gateway.v1}/messages", timeout=30), 405),
    ):
        assert response.status_code == status and response.json()["type"] == "error", response.text
        assert set(response.json()["error"]) == {"type", "message"}


def test_expert_failures_are_anthropic_errors(upstream: str, sqlite_url: str, tmp_path: Path) -> None:
    v1 = f"{upstream}/v1"
    config = GatewayConfig.model_validate(
        {"experts": [expert("down", "echo-fail500", v1), expert("flaky", "echo-broken", v1)]}
    )
    with running_gateway(config, sqlite_url, tmp_path) as gw:
        client = anthropic.Anthropic(base_url=gw.base_url, api_key="unused", max_retries=0)
        with pytest.raises(anthropic.InternalServerError) as info:
            client.messages.create(model="down", max_tokens=16, messages=HI)
        assert info.value.status_code == 502 and info.value.body["type"] == "error"  # type: ignore[index]
        assert info.value.body["error"]["type"] == "api_error"  # type: ignore[index]

        # The stream has begun (the expert sent its first words) when it breaks: an `error` event ends it.
        question = [{"role": "user", "content": MATH_QUESTION}]
        with (
            pytest.raises(anthropic.APIStatusError) as broken,
            client.messages.stream(model="flaky", max_tokens=64, messages=question) as stream,
        ):
            for _ in stream:
                pass
        assert broken.value.body["type"] == "error"  # type: ignore[index]
        assert "mid-stream" in broken.value.body["error"]["message"]  # type: ignore[index]
        wait_for(lambda: len(decisions(sqlite_url)) == 2, what="both records")
        assert sorted(r.status for r in decisions(sqlite_url)) == ["error", "stream_error"]
