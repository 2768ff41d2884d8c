"""gateway/chat/protocol.py: which request fields reach the expert, with the values the client sent."""

from __future__ import annotations

from typing import Any

from gateway.chat.protocol import ChatCompletionRequest

TOOL = {"type": "function", "function": {"name": "weather", "description": "today's weather",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
SAMPLING: dict[str, Any] = {
    "temperature": 0.7, "top_p": 0.9, "stop": ["\n\n", "END"], "n": 2, "seed": 7, "presence_penalty": 0.5,
    "frequency_penalty": -0.5, "logit_bias": {"50256": -100.0}, "logprobs": True, "top_logprobs": 3,
    "response_format": {"type": "json_object"}, "tools": [TOOL], "tool_choice": "auto",
    "parallel_tool_calls": False, "user": "tester",
}


def request(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "moe-auto", "messages": [{"role": "user", "content": "Weather in Paris?"}], **fields})


def test_every_sampling_and_tool_field_is_forwarded_as_sent() -> None:
    params = request(**SAMPLING, max_tokens=64).upstream_params()
    assert params == {**SAMPLING, "max_tokens": 64}


def test_tools_seed_stop_and_top_p_reach_the_expert_alone_too() -> None:
    for name, value in (("tools", [TOOL]), ("seed", 0), ("stop", "###"), ("top_p", 0.0),
                        ("tool_choice", {"type": "function", "function": {"name": "weather"}})):
        assert request(**{name: value}).upstream_params() == {name: value}


def test_unset_and_non_sampling_fields_stay_behind() -> None:
    params = request(stream=True, stream_options={"include_usage": True}, some_new_sdk_field=1).upstream_params()
    assert params == {}


def test_max_completion_tokens_is_sent_as_max_tokens_and_wins() -> None:
    assert request(max_completion_tokens=32).upstream_params() == {"max_tokens": 32}
    assert request(max_tokens=64).upstream_params() == {"max_tokens": 64}
    assert request(max_tokens=64, max_completion_tokens=32).upstream_params() == {"max_tokens": 32}


def test_wire_messages_leave_out_unset_fields() -> None:
    body = request(messages=[
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ann"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ])
    assert body.wire_messages() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ann"},
        {"role": "assistant", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    ]
