"""Anthropic's Messages API through the gateway: the official anthropic SDK (plain, streamed, tools, count_tokens),
LangChain's ChatAnthropic, x-api-key keys, errors in Anthropic's shape; each request routed as a chat completion,
with its decision record, headers and metrics."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.bodies import read_body
from gateway.chat.dialect import StreamEnd, StreamItem
from gateway.chat.protocol import ChatCompletionRequest
from gateway.config import GatewayConfig
from gateway.decisions.log import make_engine
from gateway.decisions.record import DecisionRecord
from gateway.errors import APIError
from gateway.keys.store import KeyStore, NewKey
from gateway.messages.dialect import MessagesDialect
from gateway.messages.protocol import AnthropicMessagesRequest
from gateway.messages.tokens import CHARS_PER_TOKEN, IMAGE_TOKENS, MESSAGE_TOKENS
from gateway.messages.translate import chat_request
from tests.gateway.support import (
    HISTORY_QUESTION,
    MATH_QUESTION,
    Gateway,
    decisions,
    expert,
    routed_config,
    running_gateway,
    wait_for,
)

LOOKUP = {
    "name": "lookup",
    "description": "Looks a question up.",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
}
CLOCK = {"name": "clock", "description": "Tells the time.", "input_schema": {"type": "object"}}
CAPITAL = "What is the capital of France?"


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


def metric(gw: Gateway, name: str, **labels: str) -> float:
    families = text_string_to_metric_families(httpx.get(f"{gw.base_url}/metrics", timeout=10).text)
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def served(expert_name: str) -> str:
    """The scripted upstream's model name for one of the healthy experts (conftest.py)."""
    return f"echo-{expert_name}"


# -- plain ---------------------------------------------------------------------------------------------------
def test_create_is_routed_recorded_and_answered_as_a_message(
    client: anthropic.Anthropic, gateway: Gateway, sqlite_url: str
) -> None:
    raw = client.messages.with_raw_response.create(
        model="moe-auto",
        max_tokens=64,
        messages=[{"role": "user", "content": MATH_QUESTION}],
    )
    message = raw.parse()
    assert raw.headers["x-moe-expert"] == "stem"
    assert raw.headers["x-moe-router"].startswith("embedding-domain@")
    assert message.id == f"msg_{raw.headers['x-moe-decision-id']}"
    assert message.type == "message" and message.role == "assistant" and message.model == "stem"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == f"[echo-stem|STEM] {MATH_QUESTION}"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == len(message.content[0].text.split())  # type: ignore[union-attr]

    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the decision record")
    [record] = decisions(sqlite_url)
    assert record.id == raw.headers["x-moe-decision-id"]
    assert record.virtual_model == "moe-auto" and record.router == "embedding-domain"
    assert record.chosen_expert == "stem" and record.status == "ok" and record.http_status == 200
    assert not record.stream and len(record.ranked) == 3
    assert (record.prompt_tokens, record.completion_tokens) == (message.usage.input_tokens, message.usage.output_tokens)
    assert metric(gateway, "llm_model_requests_total", virtual_model="moe-auto", expert="stem", status="ok") == 1


def test_system_blocks_sampling_and_metadata_reach_the_expert(client: anthropic.Anthropic, sqlite_url: str) -> None:
    message = client.messages.create(
        model="moe-auto",
        max_tokens=64,
        system="be brief",
        messages=[{"role": "user", "content": [{"type": "text", "text": HISTORY_QUESTION}]}],
        stop_sequences=["\n\n"],
        metadata={"user_id": "alice"},
        # Sampling as Anthropic's API still takes it (this SDK's release has dropped the parameters).
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 40},
    )
    assert message.model == "humanities"
    assert message.content[0].text == f"[echo-humanities|be brief] {HISTORY_QUESTION}"  # type: ignore[union-attr]
    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the decision record")


def test_max_tokens_is_the_stop_reason_when_reached(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="moe-auto", max_tokens=3, messages=[{"role": "user", "content": MATH_QUESTION}]
    )
    assert message.stop_reason == "max_tokens"
    assert message.content[0].text == "[echo-stem|STEM] Solve for"  # type: ignore[union-attr]


def test_a_met_stop_sequence_is_named(client: anthropic.Anthropic) -> None:
    """The expert names the stop string it met (vLLM's `stop_reason`), whole and streamed."""
    message = client.messages.create(
        model="moe-auto", max_tokens=50, stop_sequences=["never", "+ 7"],
        messages=[{"role": "user", "content": MATH_QUESTION}],
    )
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "+ 7")
    assert message.content[0].text == "[echo-stem|STEM] Solve for x: 3x "  # type: ignore[union-attr]
    with client.messages.stream(
        model="moe-auto", max_tokens=50, stop_sequences=["+ 7"], messages=[{"role": "user", "content": MATH_QUESTION}]
    ) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "+ 7")


def test_a_conversation_with_an_image_is_answered(client: anthropic.Anthropic) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    message = client.messages.create(
        model="moe-auto",
        max_tokens=64,
        messages=[
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi! What do you need?"},
            {
                "role": "user",
                "content": [
                    image,
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                    {"type": "text", "text": MATH_QUESTION},
                ],
            },
        ],
    )
    assert message.content[0].text.endswith(MATH_QUESTION)  # type: ignore[union-attr]


def test_unknown_fields_and_any_anthropic_version_are_accepted(gateway: Gateway) -> None:
    response = httpx.post(
        f"{gateway.v1}/messages",
        timeout=30,
        headers={"anthropic-version": "1999-01-01", "anthropic-beta": "no-such-beta", "x-api-key": "unused"},
        json={
            "model": "moe-auto",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}],
            "service_tier": "auto",
            "some_future_field": {"x": 1},
            "thinking": {"type": "disabled"},
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["type"] == "message"


# -- streamed ------------------------------------------------------------------------------------------------
def test_stream_events_in_anthropics_order(client: anthropic.Anthropic, gateway: Gateway, sqlite_url: str) -> None:
    with client.messages.with_streaming_response.create(
        model="moe-auto",
        max_tokens=64,
        messages=[{"role": "user", "content": HISTORY_QUESTION}],
        stream=True,
    ) as response:
        assert response.headers["x-moe-expert"] == "humanities"
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(response.parse())
    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    start, delta = events[0], events[-2]
    assert start.message.id == f"msg_{response.headers['x-moe-decision-id']}"  # type: ignore[union-attr]
    assert start.message.model == "humanities" and start.message.content == []  # type: ignore[union-attr]
    text = "".join(event.delta.text for event in events[2:-3])  # type: ignore[union-attr]
    assert text == f"[echo-humanities] {HISTORY_QUESTION}"
    assert delta.delta.stop_reason == "end_turn"  # type: ignore[union-attr]
    assert delta.usage.output_tokens == len(text.split()) and delta.usage.input_tokens  # type: ignore[union-attr]

    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the decision record")
    [record] = decisions(sqlite_url)
    assert record.stream and record.status == "ok" and record.chosen_expert == "humanities"
    assert record.ttft_ms is not None and record.completion_tokens == delta.usage.output_tokens  # type: ignore[union-attr]
    assert metric(gateway, "llm_model_requests_total", virtual_model="moe-auto", expert="humanities", status="ok") == 1


def test_stream_helper_builds_the_final_message(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="moe-auto", max_tokens=64, messages=[{"role": "user", "content": MATH_QUESTION}]
    ) as stream:
        assert "".join(stream.text_stream) == f"[echo-stem|STEM] {MATH_QUESTION}"
        final = stream.get_final_message()
    assert final.model == "stem" and final.stop_reason == "end_turn"
    assert final.content[0].text == f"[echo-stem|STEM] {MATH_QUESTION}"  # type: ignore[union-attr]
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


async def test_async_client_create_and_stream(gateway: Gateway) -> None:
    client = anthropic.AsyncAnthropic(base_url=gateway.base_url, api_key="unused", max_retries=0)
    message = await client.messages.create(
        model="moe-auto", max_tokens=64, messages=[{"role": "user", "content": MATH_QUESTION}]
    )
    assert message.content[0].text == f"[echo-stem|STEM] {MATH_QUESTION}"  # type: ignore[union-attr]
    async with client.messages.stream(
        model="moe-auto", max_tokens=64, messages=[{"role": "user", "content": MATH_QUESTION}]
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == f"[echo-stem|STEM] {MATH_QUESTION}"  # type: ignore[union-attr]
    await client.close()


# -- tools: call, result, answer -------------------------------------------------------------------------------
def _call_then_answer(
    client: anthropic.Anthropic, *, streamed: bool, result: dict[str, Any], **extra: Any
) -> tuple[anthropic.types.Message, anthropic.types.Message]:
    def ask(messages: list[dict[str, Any]]) -> anthropic.types.Message:
        params: dict[str, Any] = {
            "model": "moe-auto",
            "max_tokens": 64,
            "tools": [LOOKUP, CLOCK],
            "messages": messages,
            **extra,
        }
        if not streamed:
            return client.messages.create(**params)
        with client.messages.stream(**params) as stream:
            return stream.get_final_message()

    question = {"role": "user", "content": CAPITAL}
    call = ask([question])
    tool_use = call.content[-1]
    assert tool_use.type == "tool_use"
    answer = ask(
        [
            question,
            {"role": "assistant", "content": call.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, **result}]},
        ]
    )
    return call, answer


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_tool_call_result_and_answer(client: anthropic.Anthropic, sqlite_url: str, streamed: bool) -> None:
    call, answer = _call_then_answer(client, streamed=streamed, result={"content": "Paris"})
    assert call.stop_reason == "tool_use"
    [tool_use] = call.content
    assert tool_use.type == "tool_use" and tool_use.name == "lookup"
    assert tool_use.input == {"query": CAPITAL}  # the arguments streamed in two pieces, whole again
    assert tool_use.id.startswith("call_")
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].text == f"[{served(answer.model)}] tool said: Paris"  # type: ignore[union-attr]

    wait_for(lambda: len(decisions(sqlite_url)) == 2, what="both records")
    records = decisions(sqlite_url)
    assert [r.status for r in records] == ["ok", "ok"] and all(r.stream is streamed for r in records)
    assert all(r.virtual_model == "moe-auto" and r.router == "embedding-domain" for r in records)


@pytest.mark.parametrize("streamed", [False, True], ids=["whole", "streamed"])
def test_tool_choice_names_the_tool_and_errors_are_said(client: anthropic.Anthropic, streamed: bool) -> None:
    call, answer = _call_then_answer(
        client,
        streamed=streamed,
        tool_choice={"type": "tool", "name": "clock"},
        result={"content": [{"type": "text", "text": "timed out"}], "is_error": True},
    )
    assert call.content[-1].name == "clock"  # type: ignore[union-attr]
    # The scripted expert calls a tool when the conversation ends with the user's text: here it ends with the result.
    assert answer.content[0].text == f"[{served(answer.model)}] tool said: Error: timed out"  # type: ignore[union-attr]


def test_tool_choice_none_answers_in_text(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model="moe-auto",
        max_tokens=64,
        tools=[LOOKUP],
        tool_choice={"type": "none"},
        messages=[{"role": "user", "content": MATH_QUESTION}],
    )
    assert message.stop_reason == "end_turn" and [b.type for b in message.content] == ["text"]


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


# -- LangChain -----------------------------------------------------------------------------------------------
def test_langchain_chat_anthropic(gateway: Gateway) -> None:
    from langchain_anthropic import ChatAnthropic

    llm = ChatAnthropic(
        model="moe-auto", anthropic_api_url=gateway.base_url, api_key="unused", max_retries=0, max_tokens=64
    )
    assert llm.invoke(MATH_QUESTION).content == f"[echo-stem|STEM] {MATH_QUESTION}"
    streamed = "".join(str(chunk.content) for chunk in llm.stream(HISTORY_QUESTION))
    assert streamed == f"[echo-humanities] {HISTORY_QUESTION}"
    [call] = llm.bind_tools([LOOKUP]).invoke(CAPITAL).tool_calls
    assert call["name"] == "lookup" and call["args"] == {"query": CAPITAL}


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
HI = [{"role": "user", "content": "hi"}]
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


# -- the dialect alone ---------------------------------------------------------------------------------------
def _record() -> DecisionRecord:
    return DecisionRecord(requested_model="moe-auto", request_hash="h", stream=False, chosen_expert="stem")


async def test_a_met_stop_sequence_is_named_when_the_expert_names_it() -> None:
    """vLLM says which stop string it met (`stop_reason`): that is Anthropic's stop_sequence."""
    dialect = MessagesDialect(["###"])
    completion = {"choices": [{"message": {"content": "a"}, "finish_reason": "stop", "stop_reason": "###"}]}
    answer = await dialect.answer(completion, _record())
    assert (answer["stop_reason"], answer["stop_sequence"]) == ("stop_sequence", "###")
    assert dialect.stop("stop", 128001) == ("end_turn", None)  # a stop token, not a sequence
    assert dialect.stop("content_filter", None) == ("refusal", None)


async def test_tool_arguments_that_are_no_object_are_a_502() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "lookup", "arguments": "[1, 2"}}
    completion = {"choices": [{"message": {"content": None, "tool_calls": [call]}, "finish_reason": "tool_calls"}]}
    with pytest.raises(APIError) as info:
        await MessagesDialect().answer(completion, _record())
    assert info.value.status == 502
    assert MessagesDialect().error(info.value)["error"]["type"] == "api_error"


async def test_stream_of_text_then_two_tool_calls() -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def call(index: int, **fields: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, **fields}]}

    async def items() -> AsyncIterator[StreamItem]:
        for item in (
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Let me look."}),
            chunk(call(0, id="a", function={"name": "lookup", "arguments": '{"query":'})),
            chunk(call(0, function={"arguments": '"x"}'})),
            chunk(call(1, id="b", function={"name": "clock", "arguments": ""})),
            chunk({}, "tool_calls"),
        ):
            yield item
        yield StreamEnd({"prompt_tokens": 7, "completion_tokens": 5})

    raw = [event async for event in MessagesDialect().events(items(), _record())]
    events = [json.loads(e.decode().split("data: ", 1)[1]) for e in raw]
    assert [(e["type"], e.get("index")) for e in events] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert all(e.decode().startswith(f"event: {json.loads(e.decode().split('data: ', 1)[1])['type']}\n") for e in raw)
    assert events[4]["content_block"] == {"type": "tool_use", "id": "a", "name": "lookup", "input": {}}
    assert "".join(e["delta"]["partial_json"] for e in events[5:7]) == '{"query":"x"}'
    assert events[8]["content_block"]["name"] == "clock"
    assert events[10]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[10]["usage"] == {"input_tokens": 7, "output_tokens": 5}


# -- the translation alone -----------------------------------------------------------------------------------
def _translated(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "moe-auto", "max_tokens": 16, "messages": HI, **fields}
    return chat_request(read_body(json.dumps(body).encode(), AnthropicMessagesRequest))


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "lookup"}, {"type": "function", "function": {"name": "lookup"}}),
    ],
)
def test_tool_choice_becomes_chats(choice: dict[str, Any], expected: Any) -> None:
    params = _translated(tools=[LOOKUP], tool_choice=choice).upstream_params()
    assert params["tool_choice"] == expected and "parallel_tool_calls" not in params
    function = {"name": "lookup", "description": LOOKUP["description"], "parameters": LOOKUP["input_schema"]}
    assert params["tools"] == [{"type": "function", "function": function}]


def test_what_carries_over_to_the_expert() -> None:
    request = _translated(
        tools=[LOOKUP],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        stop_sequences=["###"],
        temperature=0.3,
        top_p=0.8,
        top_k=5,
        metadata={"user_id": "alice"},
        stream=True,
    )
    assert request.upstream_params() == {
        "max_tokens": 16,
        "stop": ["###"],
        "temperature": 0.3,
        "top_p": 0.8,
        "user": "alice",  # top_k: chat has none
        "tools": request.upstream_params()["tools"],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    assert request.stream


def test_blocks_become_chat_messages_in_order() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}}
    request = _translated(
        system=[{"type": "text", "text": "be brief"}],
        messages=[
            {"role": "user", "content": "look it up"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "On it."},
                    {"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "42"},
                    {"type": "text", "text": "and this?"},
                    image,
                ],
            },
        ],
    )
    assert request.wire_messages() == [
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
        {"role": "user", "content": "look it up"},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "On it."}],
            "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}],
        },
        {"role": "tool", "content": "42", "tool_call_id": "t1"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "and this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
            ],
        },
    ]
