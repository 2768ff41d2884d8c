"""Calling one expert: the client interface, what a failure is, and how each kind lets the gateway go on.

The kind decides what the gateway does next: `refused` and `disconnected` (the server closed the
connection before answering) are tried again on a new connection first; they, `timeout`,
`upstream_5xx`, `bad_response` and `broken_stream` let it fall back to the next-ranked expert (when
nothing has reached the client yet); `upstream_4xx` is the request's own fault and goes back to the
client as it is.

Two implementations: experts/openai_client.py calls any OpenAI-compatible server natively (the
default, `provider: openai`); experts/litellm_client.py goes through litellm for providers that do
not speak the OpenAI API (`provider: litellm`), and litellm is imported only when an expert uses it.
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from experts.registry import ExpertConfig

if TYPE_CHECKING:
    from experts.openai_client import ServerSession

_T = TypeVar("_T")
_LITELLM_PREFIX = re.compile(r"^(litellm\.\w+:\s*)?(\w+Exception\s+-\s+)?")
_CONNECT_FAILURES = ("Cannot connect to host", "Connection refused", "ConnectError", "All connection attempts failed")
RETRY_KINDS = frozenset({"refused", "disconnected"})
FALLBACK_KINDS = RETRY_KINDS | {"timeout", "upstream_5xx", "bad_response", "broken_stream"}


class ExpertFailure(Exception):
    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def can_fall_back(self) -> bool:
        return self.kind in FALLBACK_KINDS


def status_failure(status: int, message: str) -> ExpertFailure:
    """An error status from the expert: a 4xx is the request's fault (408, the server giving up, is not)."""
    if 400 <= status < 500 and status != 408:
        return ExpertFailure("upstream_4xx", message, status)
    if status >= 500:
        return ExpertFailure("upstream_5xx", message, 502)
    return ExpertFailure("bad_response", message, 502)


def classify(exc: BaseException) -> ExpertFailure:
    """What went wrong in a litellm call (litellm is loaded already when it is called)."""
    import litellm
    from litellm.exceptions import MidStreamFallbackError

    if isinstance(exc, ExpertFailure):
        return exc
    # litellm prefixes its own class names ("litellm.BadRequestError: AnthropicException - ..."): the client gets
    # the upstream's message, named by the expert where the client's callers catch it.
    message = _LITELLM_PREFIX.sub("", str(exc).replace("\n", " "))[:500]
    if isinstance(exc, litellm.Timeout | TimeoutError | asyncio.TimeoutError):
        return ExpertFailure("timeout", message, 504)
    if isinstance(exc, MidStreamFallbackError):
        return ExpertFailure("broken_stream", message, 502)
    # litellm raises APIConnectionError for its own internal failures too: trust only connect errors.
    if any(sign in message for sign in _CONNECT_FAILURES):
        return ExpertFailure("refused", message, 502)
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and status >= 400:
        return status_failure(status, message)
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


class ExpertClient(ABC):
    """One per expert: bounds its concurrency and applies its timeout and connection retries."""

    def __init__(self, expert: ExpertConfig) -> None:
        self.expert = expert
        self._slots = asyncio.Semaphore(expert.max_concurrency)

    @abstractmethod
    async def complete(self, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any]:
        """The whole answer, as an OpenAI chat completion dict; an ExpertFailure otherwise."""

    @abstractmethod
    def stream(self, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The answer's chunks, as OpenAI chat completion chunk dicts; an ExpertFailure when it breaks."""

    async def with_connect_retries(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """`call`, tried again while the connection itself fails: after a short pause when it is refused, at once
        when the server closed it before answering."""
        for attempt in range(self.expert.connect_retries + 1):
            try:
                return await call()
            except ExpertFailure as failure:
                if failure.kind not in RETRY_KINDS or attempt == self.expert.connect_retries:
                    raise
                if failure.kind == "refused":
                    await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")


class ExpertClients(Mapping[str, ExpertClient]):
    """Every expert's client by name, and the connection pools they share (one per server), closed together."""

    def __init__(self, experts: Sequence[ExpertConfig]) -> None:
        from experts.openai_client import OpenAIClient, ServerSession

        self._pools: dict[str, ServerSession] = {}
        self._clients: dict[str, ExpertClient] = {}
        for expert in experts:
            if expert.provider == "litellm":
                from experts.litellm_client import LiteLLMClient

                self._clients[expert.name] = LiteLLMClient(expert)
            else:
                assert expert.api_base is not None
                base = expert.api_base.rstrip("/")
                if base not in self._pools:  # one pool per server, built once (not once per expert)
                    self._pools[base] = ServerSession(base)
                self._clients[expert.name] = OpenAIClient(expert, self._pools[base])

    def __getitem__(self, name: str) -> ExpertClient:
        return self._clients[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    async def aclose(self) -> None:
        await asyncio.gather(*(pool.aclose() for pool in self._pools.values()))
