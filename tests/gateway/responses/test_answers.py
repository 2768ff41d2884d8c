"""Whole answers, streams, function tools and structured output, each routed as a chat completion."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.responses.support import SCHEMA, TOOL, record_of
from tests.gateway.support import HISTORY_QUESTION, MATH_QUESTION, Gateway


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
