"""Tool calls through `/v1/chat/completions` with the openai SDK, streamed and not: a conversation of three turns
(the expert calls the tool, the client sends its result, the expert answers) against the scripted expert, which calls
the first tool offered with {"query": <the user's text>} (its arguments streamed in two pieces) and answers
"[model] tool said: <result>". The router reads the conversation's text, never the tool schemas; the response cache
(Redis) hands a tool call back whole, streamed or not.
"""

from __future__ import annotations

import json
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
    fresh_redis_db,
    routed_config,
    running_gateway,
    wait_for,
)

REDIS_DB = 6  # a database no other test uses

# One tool set for every conversation; its description is a history question, so a router that read tool schemas
# would send a maths question elsewhere than one that reads the conversation.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": f"Answers questions such as: {HISTORY_QUESTION}",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
        },
    }
]
CONVERSATIONS = {  # question, the expert the router picks for it, what the tool returns
    "math": (MATH_QUESTION, "stem", "x = 5"),
    "history": (HISTORY_QUESTION, "humanities", "the Ming dynasty built most of it"),
}


@pytest.fixture
def gateway(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> Iterator[Gateway]:
    config = routed_config(healthy_experts, router_artifact)
    with (
        fresh_redis_db(REDIS_DB) as redis_url,
        running_gateway(config, sqlite_url, tmp_path, redis_url=redis_url) as gw,
    ):
        yield gw


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)


def streamed(client: openai.OpenAI, **request: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """A streamed chat completion: its headers, and what its chunks say once reassembled as a client does."""
    with client.chat.completions.with_streaming_response.create(model="moe-auto", stream=True, **request) as response:
        headers = dict(response.headers)
        chunks = list(response.parse())
    calls: dict[int, dict[str, Any]] = {}
    for delta in (d for c in chunks for choice in c.choices for d in choice.delta.tool_calls or []):
        call = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": "", "pieces": 0})
        call["id"] = delta.id or call["id"]
        if delta.function is not None:
            call["name"] = delta.function.name or call["name"]
            if delta.function.arguments:
                call["arguments"] += delta.function.arguments
                call["pieces"] += 1
    finish = [choice.finish_reason for c in chunks for choice in c.choices if choice.finish_reason]
    text = "".join(choice.delta.content or "" for c in chunks for choice in c.choices)
    return headers, {"calls": [calls[i] for i in sorted(calls)], "finish": finish, "text": text}


@pytest.mark.parametrize(("question", "expert", "result"), CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_three_turns(client: openai.OpenAI, sqlite_url: str, question: str, expert: str, result: str) -> None:
    messages: list[Any] = [{"role": "user", "content": question}]
    raw = client.chat.completions.with_raw_response.create(
        model="moe-auto", messages=messages, tools=TOOLS, tool_choice="auto"
    )
    choice = raw.parse().choices[0]
    assert raw.headers["x-moe-expert"] == expert
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_") and (call.type, call.function.name) == ("function", "lookup")
    assert json.loads(call.function.arguments) == {"query": question}

    messages += [choice.message, {"role": "tool", "tool_call_id": call.id, "content": result}]
    raw = client.chat.completions.with_raw_response.create(model="moe-auto", messages=messages, tools=TOOLS)
    answer = raw.parse().choices[0]
    assert raw.headers["x-moe-expert"] == expert
    assert (answer.message.content, answer.finish_reason) == (f"[echo-{expert}] tool said: {result}", "stop")
    assert not answer.message.tool_calls

    wait_for(lambda: len(decisions(sqlite_url)) == 2, what="one record per turn")
    assert [(r.chosen_expert, r.status, r.ranked[0]["expert"]) for r in decisions(sqlite_url)] == [
        (expert, "ok", expert)
    ] * 2


@pytest.mark.parametrize(("question", "expert", "result"), CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_three_turns_streamed(client: openai.OpenAI, sqlite_url: str, question: str, expert: str, result: str) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    headers, first = streamed(client, messages=messages, tools=TOOLS, tool_choice="auto")
    assert headers["x-moe-expert"] == expert
    assert first["finish"] == ["tool_calls"] and first["text"] == ""
    (call,) = first["calls"]
    assert call["id"].startswith("call_") and call["name"] == "lookup"
    assert call["pieces"] == 2  # relayed as the expert sent them
    assert json.loads(call["arguments"]) == {"query": question}

    messages += [
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": result},
    ]
    headers, answer = streamed(client, messages=messages, tools=TOOLS)
    assert headers["x-moe-expert"] == expert
    assert (answer["text"], answer["finish"], answer["calls"]) == (f"[echo-{expert}] tool said: {result}", ["stop"], [])

    wait_for(lambda: len(decisions(sqlite_url)) == 2, what="one record per turn")
    assert [(r.chosen_expert, r.status, r.stream) for r in decisions(sqlite_url)] == [(expert, "ok", True)] * 2


def test_the_router_reads_the_conversation_not_the_tools(client: openai.OpenAI, sqlite_url: str) -> None:
    messages = [{"role": "user", "content": MATH_QUESTION}]
    client.chat.completions.create(model="moe-auto", messages=messages, tools=TOOLS)
    client.chat.completions.create(model="moe-auto", messages=messages)
    wait_for(lambda: len(decisions(sqlite_url)) == 2, what="both records")
    with_tools, without = decisions(sqlite_url)
    assert with_tools.ranked == without.ranked and with_tools.chosen_expert == "stem"


def test_a_cached_tool_call_comes_back_whole_streamed_or_not(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": MATH_QUESTION}]
    raw = client.chat.completions.with_raw_response.create(model="moe-auto", messages=messages, tools=TOOLS)
    assert raw.headers["x-moe-cache"] == "miss"
    (call,) = raw.parse().choices[0].message.tool_calls or []

    raw = client.chat.completions.with_raw_response.create(model="moe-auto", messages=messages, tools=TOOLS)
    assert raw.headers["x-moe-cache"] == "hit"
    cached = raw.parse().choices[0]
    assert cached.finish_reason == "tool_calls" and cached.message.tool_calls == [call]

    headers, replayed = streamed(client, messages=messages, tools=TOOLS)
    assert headers["x-moe-cache"] == "hit" and replayed["finish"] == ["tool_calls"]
    assert [(c["id"], c["name"], c["arguments"]) for c in replayed["calls"]] == [
        (call.id, call.function.name, call.function.arguments)
    ]


def test_a_streamed_tool_call_is_not_cached(client: openai.OpenAI, sqlite_url: str) -> None:
    """A streamed answer is cached from the text it relayed: one that called a tool has none to keep."""
    messages = [{"role": "user", "content": HISTORY_QUESTION}]
    headers, _ = streamed(client, messages=messages, tools=TOOLS)
    assert headers["x-moe-cache"] == "miss"
    # The relay stores a cacheable answer before it records the decision, after the client has the whole stream.
    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the streamed answer's record")
    raw = client.chat.completions.with_raw_response.create(model="moe-auto", messages=messages, tools=TOOLS)
    assert raw.headers["x-moe-cache"] == "miss" and raw.parse().choices[0].message.tool_calls
