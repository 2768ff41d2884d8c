"""OpenAI's legacy completions wire schema (`POST /v1/completions`): the request, validated as OpenAI publishes it,
and the reply in its `text_completion` shape, made from the chat completion (or its stream's chunks) that chat
serving hands the dialect.

The request takes every field OpenAI's does, token-id prompts and `echo` included, so that a client's request
validates and, where it asks for what a chat model cannot give, is refused with the reason by translate.py rather
than with a type error. Bounds as in gateway/chat/protocol.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field

from gateway.chat.protocol import MAX_ID, MAX_LOGIT_BIAS, MAX_MODEL, MAX_STOP, Int64, StreamOptions, Wire, openai_usage

# Each prompt is routed and answered as a request of its own (see gateway/completions/api_router.py), so a list
# costs as many expert calls as it has prompts; the Batch API is the way to send more.
MAX_PROMPTS = 16

Prompts = Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)]
TokenIds = Annotated[list[Int64], Field(min_length=1)]  # as long as the body's bound on JSON values allows
TokenPrompts = Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]


class CompletionRequest(Wire):
    model: str = Field(min_length=1, max_length=MAX_MODEL)
    prompt: str | Prompts | TokenIds | TokenPrompts
    max_tokens: int | None = Field(16, ge=1, lt=2**31)  # OpenAI's default; null: as many as the expert gives
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=16)
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    seed: Int64 | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[Annotated[str, Field(max_length=20)], Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        None, max_length=MAX_LOGIT_BIAS
    )
    user: str | None = Field(None, max_length=MAX_ID)
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    best_of: int | None = Field(None, ge=1, le=20)


# -- the reply -----------------------------------------------------------------------------------------------
def text_choice(text: str, index: int, finish_reason: str | None) -> dict[str, Any]:
    return {"text": text, "index": index, "finish_reason": finish_reason, "logprobs": None}


def text_completion(completion: Mapping[str, Any], decision_id: str, first_index: int = 0) -> dict[str, Any]:
    """The chat completion (gateway/chat/protocol.py's `openai_completion`) as a `text_completion`; its choices
    numbered from `first_index` (a later prompt's of several)."""
    choices = [
        text_choice(c["message"].get("content") or "", first_index + c["index"], c["finish_reason"])
        for c in completion["choices"]
    ]
    return {
        "id": f"cmpl-{decision_id}",
        "object": "text_completion",
        "created": completion["created"],
        "model": completion["model"],
        "choices": choices,
        "usage": completion["usage"],
        "system_fingerprint": completion.get("system_fingerprint"),
    }


def text_chunk(
    decision_id: str, created: int, model: str, choices: list[dict[str, Any]], usage: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A streamed `text_completion`: some choices' text, or (no choices) the usage."""
    chunk = {
        "id": f"cmpl-{decision_id}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        chunk["usage"] = openai_usage(usage)
    return chunk
