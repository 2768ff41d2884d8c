"""The Messages dialect and the translation to a chat completion request, without a gateway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.bodies import read_body
from gateway.chat.dialect import StreamEnd, StreamItem
from gateway.chat.protocol import ChatCompletionRequest
from gateway.decisions.record import DecisionRecord
from gateway.errors import APIError
from gateway.messages.dialect import MessagesDialect
from gateway.messages.protocol import AnthropicMessagesRequest
from gateway.messages.translate import chat_request
from tests.gateway.messages.support import HI, LOOKUP


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
