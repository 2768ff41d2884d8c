"""Calls one expert through litellm and turns every failure into an `ExpertFailure` with a kind.

The kind decides what the gateway does next: `timeout`, `refused`, `upstream_5xx`, `bad_response`
and `broken_stream` let it fall back to the next-ranked expert (when nothing has reached the client
yet); `upstream_4xx` is the request's own fault and goes back to the client as it is.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from gateway.config import ExpertConfig

# litellm fetches a price map from the network at import unless told otherwise.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402 - must follow the environment setting above
from litellm.exceptions import MidStreamFallbackError  # noqa: E402

litellm.suppress_debug_info = True
litellm.telemetry = False
# No litellm callbacks are registered and its loggers stay at WARNING, so its logging payload goes
# nowhere; redacting messages out of it would cost about 1 ms of CPU per call for nothing.
litellm.turn_off_message_logging = False

_CONNECT_FAILURES = ("Cannot connect to host", "Connection refused", "ConnectError", "All connection attempts failed")
FALLBACK_KINDS = frozenset({"timeout", "refused", "upstream_5xx", "bad_response", "broken_stream"})


class ExpertFailure(Exception):
    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def can_fall_back(self) -> bool:
        return self.kind in FALLBACK_KINDS


def classify(exc: BaseException) -> ExpertFailure:
    if isinstance(exc, ExpertFailure):
        return exc
    message = str(exc).replace("\n", " ")[:500]
    if isinstance(exc, litellm.Timeout | TimeoutError | asyncio.TimeoutError):
        return ExpertFailure("timeout", message, 504)
    if isinstance(exc, MidStreamFallbackError):
        return ExpertFailure("broken_stream", message, 502)
    # litellm raises APIConnectionError for its own internal failures too: trust only connect errors.
    if any(sign in message for sign in _CONNECT_FAILURES):
        return ExpertFailure("refused", message, 502)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and 400 <= status < 500 and status != 408:
        return ExpertFailure("upstream_4xx", message, status)
    if isinstance(status, int) and status >= 500:
        return ExpertFailure("upstream_5xx", message, 502)
    return ExpertFailure("bad_response", message, 502)


def with_system_prompt(expert: ExpertConfig, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Put the expert's system prompt first, merged with the client's own system message if any.

    One leading system message keeps chat templates that accept only one (many do) working.
    """
    if not expert.system_prompt:
        return messages
    first = messages[0] if messages else None
    if first and first["role"] in ("system", "developer") and isinstance(first["content"], str):
        merged = {"role": "system", "content": f"{expert.system_prompt}\n\n{first['content']}"}
        return [merged, *messages[1:]]
    return [{"role": "system", "content": expert.system_prompt}, *messages]


class ExpertClient:
    """One per expert: bounds its concurrency and applies its timeout and connection retries."""

    def __init__(self, expert: ExpertConfig) -> None:
        self.expert = expert
        self._slots = asyncio.Semaphore(expert.max_concurrency)
        # litellm prices every response; a model missing from its price map costs it a dozen failed
        # lookups per call (about 1.5 ms of CPU), so it is told this expert's price.
        price = expert.price_per_mtok / 1e6
        litellm.register_model({expert.litellm_model: {
            "input_cost_per_token": price, "output_cost_per_token": price, "litellm_provider": "hosted_vllm", "mode": "chat",
        }})

    def _kwargs(self, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "model": self.expert.litellm_model,
            "api_base": self.expert.api_base,
            "api_key": "none",
            "messages": with_system_prompt(self.expert, messages),
            "timeout": self.expert.timeout_s,
            "max_retries": 0,
            **params,
        }

    async def _with_connect_retries(self, call: Any) -> Any:
        for attempt in range(self.expert.connect_retries + 1):
            try:
                return await call()
            except Exception as exc:  # noqa: BLE001 - classified below
                failure = classify(exc)
                if failure.kind != "refused" or attempt == self.expert.connect_retries:
                    raise failure from exc
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    async def complete(self, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        async with self._slots:
            response = await self._with_connect_retries(
                lambda: litellm.acompletion(**self._kwargs(messages, params))
            )
        return response.model_dump(exclude_none=True)

    async def stream(self, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yields chunk dicts; the expert's timeout bounds the wait for each chunk, the first included."""
        kwargs = self._kwargs(messages, {**params, "stream": True, "stream_options": {"include_usage": True}})
        async with self._slots:
            upstream = await self._with_connect_retries(lambda: litellm.acompletion(**kwargs))
            iterator = upstream.__aiter__()
            try:
                while True:
                    try:
                        chunk = await asyncio.wait_for(iterator.__anext__(), self.expert.timeout_s)
                    except StopAsyncIteration:
                        return
                    except Exception as exc:  # noqa: BLE001 - classified
                        raise classify(exc) from exc
                    yield chunk.model_dump(exclude_none=True)
            finally:
                # Closing the upstream response cancels the expert's generation too.
                aclose = getattr(upstream, "aclose", None)
                if aclose is not None:
                    await aclose()
