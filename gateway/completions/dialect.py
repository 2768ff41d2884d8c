"""Legacy completions on the wire: an answer as a `text_completion`, its stream as `text_completion` chunks then
`[DONE]`, errors in OpenAI's shape; and the answers to several prompts joined into one reply."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse

from gateway.chat.dialect import StreamEnd, StreamItem
from gateway.chat.protocol import sse
from gateway.completions.protocol import text_choice, text_chunk, text_completion
from gateway.errors import APIError

if TYPE_CHECKING:
    from gateway.decisions.record import DecisionRecord


class CompletionDialect:
    """One prompt's answer; `first_index`: the number of its first choice (a later prompt's of several)."""

    def __init__(self, first_index: int = 0, include_usage: bool = False) -> None:
        self.first_index = first_index
        self.include_usage = include_usage

    async def answer(self, completion: dict[str, Any], record: DecisionRecord) -> dict[str, Any]:
        return text_completion(completion, record.id, self.first_index)

    def error(self, error: APIError) -> dict[str, Any]:
        return error.body()

    async def events(self, items: AsyncIterator[StreamItem], record: DecisionRecord) -> AsyncIterator[bytes]:
        created: int | None = None
        async for item in items:
            if isinstance(item, StreamEnd):
                if item.error is not None:
                    yield sse(item.error.body())
                elif self.include_usage and item.usage:
                    yield sse(text_chunk(record.id, created or 0, record.chosen_expert or "", [], item.usage))
                yield sse("[DONE]")
                continue
            created = created or item["created"]
            # Only text and endings: the opening chunk's role, and anything but text, have no place in a text stream.
            choices = [
                text_choice(c["delta"].get("content") or "", c["index"], c["finish_reason"])
                for c in item["choices"]
                if c["delta"].get("content") or c["finish_reason"]
            ]
            if choices:
                yield sse(text_chunk(record.id, created, item["model"], choices))


# Headers that name one value per prompt when several prompts are answered together.
PER_PROMPT = ("x-moe-decision-id", "x-moe-expert")


def joined(replies: Sequence[JSONResponse]) -> JSONResponse:
    """Several prompts' replies as one, in the prompts' order: their choices, usage summed, `model` the experts that
    answered; `x-moe-decision-id` and `x-moe-expert` list one value per prompt, `x-moe-router` the router that
    routed them all. Where a prompt failed, the reply is the first failure (each prompt keeps its own decision
    record either way)."""
    values = {name: [r.headers.get(name, "") for r in replies] for name in PER_PROMPT}
    headers = {name: ",".join(v) for name, v in values.items() if all(v)}
    failed = next((r for r in replies if r.status_code != 200), None)
    if failed is not None:
        failed.headers.update(headers)
        return failed
    answers = [json.loads(r.body) for r in replies]
    usages = [a["usage"] for a in answers]
    body = {
        **answers[0],
        "model": ",".join(dict.fromkeys(a["model"] for a in answers)),
        "choices": [choice for a in answers for choice in a["choices"]],
        "usage": None if None in usages else {k: sum(u[k] for u in usages) for k in usages[0]},
    }
    routers = {r.headers.get("x-moe-router") for r in replies}
    if len(routers) == 1 and (router := routers.pop()):
        headers["x-moe-router"] = router
    return JSONResponse(body, headers=headers)
