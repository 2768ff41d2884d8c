"""Calls an expert through litellm: for providers that do not speak the OpenAI API (Anthropic, Bedrock, Vertex...).

`model` is litellm's model string (e.g. `anthropic/claude-3-5-haiku-20241022`); `api_base`, when set,
overrides the provider's own address, and `api_key_env` names the variable holding the key.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from experts.client import ExpertClient, ExpertFailure, classify, with_system_prompt
from experts.registry import ExpertConfig

# litellm fetches a price map from the network at import unless told otherwise.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402 - must follow the environment setting above

litellm.suppress_debug_info = True
litellm.telemetry = False
# No litellm callbacks are registered and its loggers stay at WARNING, so its logging payload goes
# nowhere; redacting messages out of it would cost about 1 ms of CPU per call for nothing.
litellm.turn_off_message_logging = False


class LiteLLMClient(ExpertClient):
    def __init__(self, expert: ExpertConfig) -> None:
        super().__init__(expert)
        self._key = os.environ.get(expert.api_key_env) if expert.api_key_env else None

    def _kwargs(self, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        where = {"api_base": self.expert.api_base} if self.expert.api_base else {}
        return {
            "model": self.expert.model,
            **where,
            **({"api_key": self._key} if self._key else {}),
            "messages": with_system_prompt(self.expert, messages),
            "timeout": self.expert.timeout_s,
            "max_retries": 0,
            **params,
        }

    async def _call(self, kwargs: dict[str, Any]) -> Any:
        try:
            return await litellm.acompletion(**kwargs)
        except Exception as exc:  # noqa: BLE001 - classified
            raise self._failure(exc) from exc

    def _failure(self, exc: Exception) -> ExpertFailure:
        """What went wrong, named by the expert (litellm's own class names left out)."""
        failure = classify(exc)
        return ExpertFailure(failure.kind, f"{self.expert.name}: {failure}", failure.status)

    async def complete(self, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        kwargs = self._kwargs(messages, params)
        async with self._slots:
            response = await self.with_connect_retries(lambda: self._call(kwargs))
        return response.model_dump(exclude_none=True)

    async def stream(self, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Yields chunk dicts; the expert's timeout bounds the wait for each chunk, the first included."""
        kwargs = self._kwargs(messages, {**params, "stream": True, "stream_options": {"include_usage": True}})
        async with self._slots:
            upstream = await self.with_connect_retries(lambda: self._call(kwargs))
            iterator = upstream.__aiter__()
            try:
                while True:
                    try:
                        chunk = await asyncio.wait_for(iterator.__anext__(), self.expert.timeout_s)
                    except StopAsyncIteration:
                        return
                    except Exception as exc:  # noqa: BLE001 - classified
                        raise self._failure(exc) from exc
                    yield chunk.model_dump(exclude_none=True)
            finally:
                # Closing the upstream response cancels the expert's generation too.
                aclose = getattr(upstream, "aclose", None)
                if aclose is not None:
                    await aclose()
