"""OpenAI's Responses API (`/v1/responses`) through the official openai SDK: routed like a chat completion (same
record, headers and metrics), streamed as the Responses event sequence, function tools over three turns, structured
output, stored responses continued, read and deleted per tenant, and bad input answered in OpenAI's error shape.

The experts sit behind a spy that keeps every chat completion the gateway sent them, then answers as the scripted
upstream (bench/upstream.py) does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, inspect, update
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner

from bench import upstream as scripted
from bench.upstream import serve_in_thread
from gateway.bodies import BodyError, read_body
from gateway.chat.protocol import MAX_MESSAGES
from gateway.cli import app as cli
from gateway.errors import APIError
from gateway.migrate import downgrade, upgrade
from gateway.responses.protocol import ResponsesRequest
from gateway.responses.translate import to_chat
from migrations.schema import ResponseRow
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
from tests.gateway.test_api_keys import issue_key

TOOL = {
    "type": "function",
    "name": "lookup",
    "description": "Look a fact up.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    "strict": True,
}
SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"], "additionalProperties": False}


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


def record_of(database: str, decision_id: str) -> Any:
    wait_for(lambda: any(r.id == decision_id for r in decisions(database)), what=f"decision {decision_id}")
    return next(r for r in decisions(database) if r.id == decision_id)


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# -- a whole answer ----------------------------------------------------------------------------------------------
def test_plain_response_is_routed_recorded_and_counted(
    client: openai.OpenAI, gateway: Gateway, database: str, sent: list[dict[str, Any]]
) -> None:
    raw = client.responses.with_raw_response.create(
        model="moe-auto",
        input=HISTORY_QUESTION,
        instructions="be brief",
        temperature=0.2,
        top_p=0.9,
        max_output_tokens=64,
        metadata={"ticket": "17"},
        user="ada",
    )
    response = raw.parse()
    decision_id = raw.headers["x-moe-decision-id"]
    assert raw.headers["x-moe-expert"] == "humanities"
    assert raw.headers["x-moe-router"].startswith("embedding-domain@")
    assert response.output_text == f"[echo-humanities|be brief] {HISTORY_QUESTION}"
    assert "output_text" not in json.loads(raw.text)  # the SDK's property, not a wire field
    assert response.id == f"resp_{decision_id}" and response.object == "response"
    assert response.status == "completed" and response.incomplete_details is None and response.error is None
    assert response.model == "humanities"
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    # The request's parameters, echoed.
    assert (response.instructions, response.temperature, response.top_p, response.max_output_tokens) == (
        "be brief",
        0.2,
        0.9,
        64,
    )
    assert response.metadata == {"ticket": "17"} and response.user == "ada" and response.store is True
    assert response.tool_choice == "auto" and response.tools == [] and response.parallel_tool_calls is True
    assert response.text is not None and response.text.format is not None and response.text.format.type == "text"
    # The expert got a chat completion: instructions first, the sampling parameters, the token limit.
    [chat] = sent
    assert chat["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": HISTORY_QUESTION},
    ]
    assert (chat["temperature"], chat["top_p"], chat["max_tokens"], chat["user"]) == (0.2, 0.9, 64, "ada")
    assert "metadata" not in chat and "response_format" not in chat

    record = record_of(database, decision_id)
    assert record.chosen_expert == "humanities" and record.virtual_model == "moe-auto"
    assert (record.status, record.http_status, record.stream) == ("ok", 200, False)
    assert record.router == "embedding-domain" and record.routing_ms is not None
    assert record.completion_tokens == response.usage.output_tokens
    metrics = httpx.get(f"{gateway.base_url}/metrics").text
    assert (
        'llm_model_requests_total{expert="humanities",router="embedding-domain",status="ok",virtual_model="moe-auto"}'
        in metrics
    )


def test_input_items_become_chat_messages(client: openai.OpenAI, sent: list[dict[str, Any]]) -> None:
    response = client.responses.create(
        model="general",
        input=[
            {"role": "developer", "content": "answer in French"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Bonjour."}]},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in this picture?"},
                    {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"},
                ],
            },
        ],
    )
    assert response.output_text.startswith("[echo-general] What is in this picture?")
    assert sent[0]["messages"] == [
        {"role": "developer", "content": "answer in French"},
        {"role": "assistant", "content": [{"type": "text", "text": "Bonjour."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
            ],
        },
    ]


def test_max_output_tokens_makes_an_incomplete_response(client: openai.OpenAI) -> None:
    response = client.responses.create(model="general", input="one two three four five", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "[echo-general] one" and response.output[0].status == "incomplete"
    events = list(
        client.responses.create(model="general", input="one two three four five", max_output_tokens=2, stream=True)
    )
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


# -- streamed ----------------------------------------------------------------------------------------------------
def test_stream_is_the_responses_event_sequence(client: openai.OpenAI, database: str) -> None:
    events = list(client.responses.create(model="moe-auto", input=MATH_QUESTION, stream=True))
    kinds = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = f"[echo-stem|STEM] {MATH_QUESTION}"
    assert len(deltas) > 1 and "".join(deltas) == text
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    done = events[-1].response
    assert done.status == "completed" and done.output_text == text and done.model == "stem"
    assert done.usage is not None and done.usage.output_tokens > 0
    assert events[2].item.id == events[-2].item.id == done.output[0].id
    record = record_of(database, done.id.removeprefix("resp_"))
    assert record.stream and record.status == "ok" and record.chosen_expert == "stem" and record.ttft_ms is not None


def test_stream_helper_gives_the_final_response(client: openai.OpenAI) -> None:
    with client.responses.stream(model="moe-auto", input=HISTORY_QUESTION) as stream:
        pieces = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(pieces) == final.output_text == f"[echo-humanities] {HISTORY_QUESTION}"


def test_stream_headers_name_the_decision(gateway: Gateway) -> None:
    body = {"model": "moe-auto", "input": HISTORY_QUESTION, "stream": True}
    with httpx.stream("POST", f"{gateway.v1}/responses", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-moe-expert"] == "humanities"
        lines = [line for line in response.iter_lines() if line]
    # Each event names its type twice: the SSE event field and the JSON's `type`.
    for event, data in zip(lines[::2], lines[1::2], strict=True):
        assert event.removeprefix("event: ") == json.loads(data.removeprefix("data: "))["type"]
    assert (
        json.loads(lines[-1].removeprefix("data: "))["response"]["id"]
        == f"resp_{response.headers['x-moe-decision-id']}"
    )


# -- function tools: call, result, answer ----------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_function_tool_conversation_in_three_turns(
    client: openai.OpenAI, sent: list[dict[str, Any]], stream: bool
) -> None:
    def create(**kwargs: Any) -> Any:
        if not stream:
            return client.responses.create(model="moe-auto", tools=[TOOL], **kwargs)
        with client.responses.stream(model="moe-auto", tools=[TOOL], **kwargs) as events:
            kinds = [e.type for e in events]
            final = events.get_final_response()
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        return final

    question = "What is the boiling point of water on Everest?"
    called = create(input=question)  # turn 1: the model calls the tool
    [call] = called.output
    assert call.type == "function_call" and call.name == "lookup" and call.status == "completed"
    assert json.loads(call.arguments) == {"query": question} and call.call_id
    assert called.output_text == ""
    # The expert got chat's nested tool shape.
    assert sent[0]["tools"] == [{"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}]

    # Turn 2 (the tool's result) continues the stored conversation; turn 3 is the model's answer.
    answered = create(
        previous_response_id=called.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "about 70 C"}],
    )
    assert answered.output_text.endswith("tool said: about 70 C")
    assert answered.previous_response_id == called.id
    assert sent[1]["messages"][-3:] == [  # after the stem expert's system prompt
        {"role": "user", "content": question},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": call.call_id, "type": "function", "function": {"name": "lookup", "arguments": call.arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "about 70 C"},
    ]


def test_function_call_items_sent_back_without_storing(client: openai.OpenAI, sent: list[dict[str, Any]]) -> None:
    called = client.responses.create(
        model="general",
        input="Weather in Paris?",
        tools=[TOOL],
        store=False,
        tool_choice={"type": "function", "name": "lookup"},
        parallel_tool_calls=False,
    )
    assert sent[0]["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert sent[0]["parallel_tool_calls"] is False
    assert called.tool_choice.type == "function" and called.tool_choice.name == "lookup"
    answered = client.responses.create(
        model="general",
        tools=[TOOL],
        store=False,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            *called.output,
            {
                "type": "function_call_output",
                "call_id": called.output[0].call_id,
                "output": [{"type": "input_text", "text": "sunny"}],
            },
        ],
    )
    assert answered.output_text == "[echo-general] tool said: sunny"
    assert [m["role"] for m in sent[1]["messages"]] == ["user", "assistant", "tool"]


def test_a_streamed_tool_call_is_told_in_argument_deltas(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="general", input="Weather in Rome?", tools=[TOOL], stream=True))
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",  # the script's two pieces
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(arguments) == {"query": "Weather in Rome?"}
    assert events[5].arguments == arguments == events[-1].response.output[0].arguments


# -- structured output -----------------------------------------------------------------------------------------
def test_json_schema_format_reaches_the_expert_as_response_format(
    client: openai.OpenAI, sent: list[dict[str, Any]]
) -> None:
    response = client.responses.create(
        model="moe-auto",
        input=MATH_QUESTION,
        text={"format": {"type": "json_schema", "name": "solution", "schema": SCHEMA, "strict": True}},
    )
    assert sent[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "solution", "schema": SCHEMA, "strict": True},
    }
    assert response.text.format.type == "json_schema" and response.text.format.name == "solution"
    assert response.text.format.schema_ == SCHEMA
    client.responses.create(model="general", input="hi", text={"format": {"type": "json_object"}})
    assert sent[1]["response_format"] == {"type": "json_object"}


# -- stored responses ----------------------------------------------------------------------------------------------
def test_store_continue_get_and_delete(client: openai.OpenAI, gateway: Gateway, sent: list[dict[str, Any]]) -> None:
    first = client.responses.create(model="general", input="My name is Ada.", instructions="be brief")
    second = client.responses.create(model="general", input="What is my name?", previous_response_id=first.id)
    # The earlier turn and its answer come first; its instructions were its own.
    assert sent[1]["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "[echo-general|be brief] My name is Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    third = client.responses.create(model="general", input="And now?", previous_response_id=second.id)
    assert [m["content"] for m in sent[2]["messages"]][-3:] == [
        "What is my name?",
        "[echo-general] What is my name?",
        "And now?",
    ]

    retrieved = client.responses.retrieve(first.id)
    assert retrieved.id == first.id and retrieved.output_text == first.output_text
    assert retrieved.model_dump() == first.model_dump()

    deleted = httpx.delete(f"{gateway.v1}/responses/{first.id}")
    assert deleted.status_code == 200 and deleted.json() == {"id": first.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as gone:
        client.responses.create(model="general", input="hi", previous_response_id=first.id)
    assert gone.value.code == "response_not_found" and gone.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(first.id)
    assert client.responses.retrieve(third.id).previous_response_id == second.id  # the others stay


def test_a_response_past_its_retention_is_pruned_and_then_unknown(client: openai.OpenAI, database: str) -> None:
    old = client.responses.create(model="general", input="Long ago.")
    kept = client.responses.create(model="general", input="Just now.")
    engine = create_engine(database)
    with engine.begin() as conn:
        conn.execute(
            update(ResponseRow)
            .where(ResponseRow.id == old.id)
            .values(created_at=datetime.now(UTC) - timedelta(days=31))
        )
    engine.dispose()
    pruned = CliRunner().invoke(cli, ["db", "prune"], env={"DATABASE_URL": database})
    assert pruned.exit_code == 0 and "removed 1 stored responses" in pruned.output, pruned.output
    with pytest.raises(openai.NotFoundError) as gone:
        client.responses.retrieve(old.id)
    assert gone.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="general", input="And then?", previous_response_id=old.id)
    assert client.responses.retrieve(kept.id).output_text == kept.output_text


def test_a_response_not_stored_cannot_be_found(client: openai.OpenAI) -> None:
    response = client.responses.create(model="general", input="forget me", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_a_streamed_response_is_stored_before_it_completes(client: openai.OpenAI, sent: list[dict[str, Any]]) -> None:
    events = list(client.responses.create(model="general", input="Remember 7.", stream=True))
    streamed = events[-1].response
    assert client.responses.retrieve(streamed.id).output_text == streamed.output_text == "[echo-general] Remember 7."
    client.responses.create(model="general", input="What was it?", previous_response_id=streamed.id)
    assert [m["role"] for m in sent[1]["messages"]] == ["user", "assistant", "user"]


def test_responses_are_their_tenants_only(
    router_artifact: Path, postgres_url: str, tmp_path: Path, upstream: str
) -> None:
    experts = [expert("general", "echo-general", f"{upstream}/v1", domains=["other"])]
    config = routed_config(experts, router_artifact)
    with running_gateway(config, postgres_url, tmp_path, moe_require_api_key=True) as gw:
        acme, acme_too = issue_key(postgres_url, tenant="acme"), issue_key(postgres_url, name="b", tenant="acme")
        globex = issue_key(postgres_url, tenant="globex")

        def sdk(key: Any) -> openai.OpenAI:
            return openai.OpenAI(base_url=gw.v1, api_key=key.key, max_retries=0)

        mine = sdk(acme).responses.create(model="moe-auto", input="a secret plan")
        # Another of the tenant's keys sees it and continues it.
        assert sdk(acme_too).responses.retrieve(mine.id).output_text == mine.output_text
        sdk(acme_too).responses.create(model="moe-auto", input="go on", previous_response_id=mine.id)
        # Another tenant's key: as if it did not exist.
        for attempt in (
            lambda c: c.responses.retrieve(mine.id),
            lambda c: c.responses.delete(mine.id),
            lambda c: c.responses.create(model="moe-auto", input="x", previous_response_id=mine.id),
        ):
            with pytest.raises(openai.NotFoundError) as info:
                attempt(sdk(globex))
            assert "secret" not in str(info.value.body)
        assert httpx.get(f"{gw.v1}/responses/{mine.id}").status_code == 401  # no key at all
        assert sdk(acme).responses.retrieve(mine.id).id == mine.id  # still there


# -- failures ----------------------------------------------------------------------------------------------------
def test_a_stream_cut_midway_ends_with_error_then_failed(
    upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    experts = [expert("flaky", "broken", f"{upstream}/v1", domains=["other"])]
    with running_gateway(routed_config(experts, router_artifact), sqlite_url, tmp_path) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        events = list(client.responses.create(model="flaky", input=MATH_QUESTION, stream=True))
        kinds = [e.type for e in events]
        assert kinds[-2:] == ["error", "response.failed"] and "response.completed" not in kinds
        assert events[-2].code == "stream_interrupted" and "mid-stream" in events[-2].message
        failed = events[-1].response
        assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
        assert failed.output[0].status == "incomplete" and failed.output[0].content[0].text == "[broken] Solve"
        with pytest.raises(openai.NotFoundError):  # a failed response is not kept to continue
            client.responses.retrieve(failed.id)
    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the decision record")
    record = decisions(sqlite_url)[0]
    assert (record.status, record.http_status) == ("stream_error", 502)


def test_unknown_model_is_openai_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="gpt-nope", input="hi")
    assert info.value.code == "model_not_found" and info.value.param == "model"


GOOD: dict[str, Any] = {"model": "general", "input": "hi"}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({**GOOD, "tools": [{"type": "web_search"}]}, "tools.0", "web_search"),
        ({**GOOD, "tools": [{**TOOL, "name": "x" * 65}]}, "tools.0.name", "at most 64"),
        ({**GOOD, "tool_choice": {"type": "file_search"}}, "tool_choice", "file_search"),
        ({**GOOD, "background": True}, "background", "background"),
        ({**GOOD, "conversation": "conv_1"}, "conversation", "previous_response_id"),
        ({**GOOD, "input": [{"type": "reasoning", "summary": []}]}, "input.0", "function_call_output"),
        ({**GOOD, "input": [{"role": "wizard", "content": "hi"}]}, "input.0", "role user"),
        ({**GOOD, "input": [{"role": ["user"], "content": "hi"}]}, "input.0", "role user"),
        ({**GOOD, "input": [5]}, "input.0", "role user"),
        (
            {**GOOD, "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
            "input.0.user.content.0.input_image",
            "image_url",
        ),
        (
            {**GOOD, "input": [{"role": "system", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input.0.system.content.0.type",
            "input_text",
        ),
        ({**GOOD, "input": [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1)}, "input", "at most"),
        ({**GOOD, "input": []}, "input", "at least 1"),
        ({"model": "general"}, "input", "required"),
        ({**GOOD, "temperature": 3}, "temperature", "less than or equal to 2"),
        ({**GOOD, "max_output_tokens": 0}, "max_output_tokens", "greater than or equal to 1"),
        ({**GOOD, "metadata": {str(i): "v" for i in range(17)}}, "metadata", "at most 16"),
        (
            {**GOOD, "text": {"format": {"type": "json_schema", "name": "x"}}},
            "text.format.json_schema.schema",
            "required",
        ),
        ({**GOOD, "store": "yes"}, "store", "boolean"),
    ],
)
def test_bad_input_is_an_openai_400(gateway: Gateway, body: dict[str, Any], param: str, words: str) -> None:
    error = assert_openai_error(httpx.post(f"{gateway.v1}/responses", json=body), 400)
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_a_conversation_too_long_with_its_earlier_turns_is_a_400(client: openai.OpenAI, gateway: Gateway) -> None:
    first = client.responses.create(model="general", input="hi")
    body = {**GOOD, "previous_response_id": first.id, "input": [{"role": "user", "content": "x"}] * MAX_MESSAGES}
    error = assert_openai_error(httpx.post(f"{gateway.v1}/responses", json=body), 400)
    assert error["param"] == "input" and "at most" in error["message"]


def test_malformed_bodies_and_unknown_ids(gateway: Gateway) -> None:
    bad_json = httpx.post(f"{gateway.v1}/responses", content=b"{nope", headers={"content-type": "application/json"})
    assert_openai_error(bad_json, 400)
    assert_openai_error(httpx.post(f"{gateway.v1}/responses", json=["model", "general"]), 400)
    for method in ("GET", "DELETE"):
        assert assert_openai_error(httpx.request(method, f"{gateway.v1}/responses/resp_nope"), 404)["code"] == (
            "response_not_found"
        )
    unknown = httpx.post(f"{gateway.v1}/responses", json={**GOOD, "previous_response_id": "resp_nope"})
    assert assert_openai_error(unknown, 404)["param"] == "previous_response_id"


def test_migration_0009_goes_up_and_down(database_url: str) -> None:
    def tables() -> set[str]:
        engine = create_engine(database_url)
        try:
            return set(inspect(engine).get_table_names())
        finally:
            engine.dispose()

    upgrade(database_url, "0009")
    assert "responses" in tables()
    downgrade(database_url, "0008")
    assert "responses" not in tables()
    upgrade(database_url)
    assert "responses" in tables()


WORDS = [
    "user",
    "assistant",
    "system",
    "developer",
    "message",
    "function_call",
    "function_call_output",
    "input_text",
    "input_image",
    "output_text",
    "refusal",
    "function",
    "json_schema",
    "json_object",
    "text",
    "auto",
]
KEYS = [
    "type",
    "role",
    "content",
    "text",
    "image_url",
    "file_id",
    "call_id",
    "name",
    "arguments",
    "output",
    "refusal",
    "format",
    "schema",
]
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(WORDS)
    | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(KEYS), children, max_size=4),
    max_leaves=10,
)
ITEM = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(WORDS) | JSON, max_size=5)
FIELDS = {
    "input": st.lists(ITEM, min_size=1, max_size=3) | JSON,
    "tools": st.lists(ITEM, max_size=2) | JSON,
    "tool_choice": ITEM | JSON,
    "text": st.fixed_dictionaries({"format": ITEM}) | JSON,
    "instructions": JSON,
    "metadata": JSON,
    "background": JSON,
    "previous_response_id": JSON,
}


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(fields=st.fixed_dictionaries({}, optional=FIELDS))
def test_any_json_is_read_or_refused_never_crashes(fields: dict[str, Any]) -> None:
    """Whatever a body holds, reading it gives a request or a 400, and a request read translates or is a 400."""
    raw = json.dumps({"model": "general", "input": "hi", **fields}).encode()
    try:
        body = read_body(raw, ResponsesRequest)
    except BodyError:
        return
    try:
        to_chat(body, [])
    except APIError as error:
        assert error.status == 400
