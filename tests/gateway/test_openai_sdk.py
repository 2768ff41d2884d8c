"""The official openai SDK (sync, async, streaming, usage, errors) and LangChain against a running gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway.support import (
    HISTORY_QUESTION,
    MATH_QUESTION,
    Gateway,
    decisions,
    routed_config,
    running_gateway,
    wait_for,
)


@pytest.fixture
def gateway(healthy_experts: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(routed_config(healthy_experts, router_artifact), sqlite_url, tmp_path) as gw:
        yield gw


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)


def test_routed_create_names_the_expert_and_reports_usage(client: openai.OpenAI, gateway: Gateway, sqlite_url: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="moe-auto", messages=[{"role": "user", "content": MATH_QUESTION}], temperature=0.2, max_tokens=64
    )
    completion = raw.parse()
    assert raw.headers["x-moe-expert"] == "stem"
    assert raw.headers["x-moe-router"].startswith("embedding-domain@")
    # The echo upstream shows which served model and system prompt it got: the stem expert's.
    assert completion.choices[0].message.content == f"[echo-stem|STEM] {MATH_QUESTION}"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "stem"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert completion.id == f"chatcmpl-{raw.headers['x-moe-decision-id']}"

    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the decision record")
    record = decisions(sqlite_url)[0]
    assert record.id == raw.headers["x-moe-decision-id"]
    assert record.chosen_expert == "stem" and record.status == "ok" and record.http_status == 200
    assert record.ranked[0]["expert"] == "stem" and len(record.ranked) == 3
    assert record.prompt_tokens == completion.usage.prompt_tokens
    assert record.cost_usd == pytest.approx(completion.usage.total_tokens * 0.2 / 1e6)
    assert record.routing_ms is not None and record.routing_ms > 0
    assert record.prompt is None  # prompt text is stored only when enabled


def test_routes_by_domain(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="moe-auto", messages=[{"role": "user", "content": HISTORY_QUESTION}]
    )
    assert raw.headers["x-moe-expert"] == "humanities"


def test_stream_with_usage(client: openai.OpenAI, sqlite_url: str) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="moe-auto",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": HISTORY_QUESTION}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        assert response.headers["x-moe-expert"] == "humanities"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"[echo-humanities|be brief] {HISTORY_QUESTION}"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the decision record")
    record = decisions(sqlite_url)[0]
    assert record.stream and record.status == "ok" and record.ttft_ms is not None
    assert record.completion_tokens == chunks[-1].usage.completion_tokens


def test_stream_without_usage_sends_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model="moe-auto", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)


async def test_async_client_create_and_stream(gateway: Gateway) -> None:
    client = openai.AsyncOpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    completion = await client.chat.completions.create(
        model="moe-auto", messages=[{"role": "user", "content": [{"type": "text", "text": MATH_QUESTION}]}]
    )
    assert completion.choices[0].message.content == f"[echo-stem|STEM] {MATH_QUESTION}"
    stream = await client.chat.completions.create(
        model="moe-auto", messages=[{"role": "user", "content": MATH_QUESTION}], stream=True
    )
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == f"[echo-stem|STEM] {MATH_QUESTION}"
    await client.close()


def test_expert_by_name_skips_routing(client: openai.OpenAI, sqlite_url: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="general", messages=[{"role": "user", "content": MATH_QUESTION}]
    )
    assert raw.headers["x-moe-expert"] == "general" and "x-moe-router" not in raw.headers
    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the decision record")
    record = decisions(sqlite_url)[0]
    assert record.virtual_model is None and record.router is None and record.chosen_expert == "general"


def test_tools_and_multi_turn_are_accepted(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="moe-auto",
        messages=[
            {"role": "user", "content": "What's the weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "user", "content": "And tomorrow?"},
        ],
        tools=[{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}],
        seed=7, n=1, stop=["\n\n"], top_p=0.9, max_completion_tokens=32, user="tester",
        response_format={"type": "text"},
    )
    # The conversation ends with a user message and offers a tool: the scripted expert calls it (bench/upstream.py).
    call = completion.choices[0].message.tool_calls[0]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, call.function.arguments) == ("weather", '{"query": "And tomorrow?"}')


def test_cost_knob_in_the_model_name(client: openai.OpenAI, sqlite_url: str) -> None:
    """`moe-auto:<lambda>` trades predicted quality for price: a large lambda leaves the dearer stem expert."""
    quality = client.chat.completions.with_raw_response.create(
        model="moe-auto:0", messages=[{"role": "user", "content": MATH_QUESTION}]
    )
    thrifty = client.chat.completions.with_raw_response.create(
        model="moe-auto:100000", messages=[{"role": "user", "content": MATH_QUESTION}]
    )
    assert quality.headers["x-moe-expert"] == "stem"  # price 0.2 per 1M tokens
    assert thrifty.headers["x-moe-expert"] in {"humanities", "general"}  # price 0.1
    wait_for(lambda: len(decisions(sqlite_url)) == 2, what="both records")
    assert [r.policy for r in decisions(sqlite_url)] == ["0", "100000"]


@pytest.mark.parametrize("model", ["moe-auto:lots", "moe-auto:q95", "moe-auto:-1"])
def test_bad_cost_knob_is_a_400_naming_the_model(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "invalid_cost_knob" and info.value.param == "model"


def test_unknown_model_is_openai_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-nope", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found" and info.value.param == "model"


def test_models_lists_virtual_models_and_experts(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["moe-auto", "stem", "humanities", "general"]


def test_langchain_chat_openai(gateway: Gateway) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="moe-auto", base_url=gateway.v1, api_key="unused", max_retries=0)
    assert llm.invoke(MATH_QUESTION).content == f"[echo-stem|STEM] {MATH_QUESTION}"
    streamed = "".join(str(chunk.content) for chunk in llm.stream(HISTORY_QUESTION))
    assert streamed == f"[echo-humanities] {HISTORY_QUESTION}"
