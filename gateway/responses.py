"""Answers in OpenAI's wire shape: a chat completion, its stream's chunks and server-sent events, from what an
expert sent (any OpenAI-compatible dict) and the decision that chose it."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from gateway.decision_log import DecisionRecord

# What a message (or a stream's delta) may carry to the client; anything else an expert adds stays behind.
_REPLY_KEYS = {"role", "content", "tool_calls", "function_call", "refusal"}


def sse(payload: Mapping[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


REPLAY_FIRST: dict[str, Any] = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}


async def replay(completion: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
    """A complete answer (cached, voted) as the upstream chunks that would have carried it (after `REPLAY_FIRST`)."""
    choice = completion["choices"][0]
    yield {"choices": [{"index": 0, "delta": {"content": choice["message"].get("content") or ""}}]}
    yield {"choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}]}
    if completion.get("usage"):
        yield {"choices": [], "usage": completion["usage"]}


def openai_completion(payload: dict[str, Any], record: DecisionRecord) -> dict[str, Any]:
    choices = [
        {
            "index": c.get("index", i),
            "message": {k: v for k, v in c.get("message", {}).items() if k in _REPLY_KEYS},
            "finish_reason": c.get("finish_reason"),
            "logprobs": c.get("logprobs"),
        }
        for i, c in enumerate(payload.get("choices", []))
    ]
    return {
        "id": f"chatcmpl-{record.id}",
        "object": "chat.completion",
        "created": payload.get("created") or int(time.time()),
        "model": record.chosen_expert,
        "choices": choices,
        "usage": openai_usage(payload.get("usage")),
        "system_fingerprint": payload.get("system_fingerprint"),
    }


def openai_usage(usage: Mapping[str, Any] | None) -> dict[str, int] | None:
    if not usage:
        return None
    keys = ("prompt_tokens", "completion_tokens", "total_tokens")
    return {k: int(usage.get(k) or 0) for k in keys}


def openai_chunk(chunk: Mapping[str, Any], stream_id: str, model: str) -> dict[str, Any] | None:
    """An upstream chunk in OpenAI's shape; None for chunks that carry only usage."""
    choices = [
        {
            "index": c.get("index", 0),
            "delta": {k: v for k, v in (c.get("delta") or {}).items() if k in _REPLY_KEYS and v is not None},
            "finish_reason": c.get("finish_reason"),
            "logprobs": c.get("logprobs"),
        }
        for c in chunk.get("choices", [])
        if c.get("delta") or c.get("finish_reason")
    ]
    if not choices:
        return None
    return {
        "id": stream_id,
        "object": "chat.completion.chunk",
        "created": chunk.get("created") or int(time.time()),
        "model": model,
        "choices": choices,
    }


def usage_chunk(stream_id: str, model: str, usage: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": stream_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": openai_usage(usage),
    }
