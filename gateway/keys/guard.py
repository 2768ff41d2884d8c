"""API keys at the door: checked on /v1 requests, each with its own limits and budget (the keys themselves:
gateway/keys/store.py).

The gateway checks a key against a short in-process cache (`MOE_KEY_CACHE_TTL_S`), so the database
is asked at most once per key and TTL, and a revocation reaches every replica within that TTL
(at once on the replica that revoked it). While the database is down, keys already seen keep their
last known state, however old; unseen ones get 503.

Spend: a finished request's cost is added in memory and written to `api_keys.spent_usd` by a
background task, never while a client waits. A key whose spend reaches its budget gets 429
`insufficient_quota`. A replica learns the others' spend when it re-reads the key (within the TTL),
and requests already in flight can take a key a little past its budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from typing import Annotated, Literal

from cachetools import LRUCache, TTLCache
from fastapi import APIRouter, Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel

from gateway.decisions.record import DecisionRecord
from gateway.errors import APIError
from gateway.keys.rate_limit import RateLimiter
from gateway.keys.store import ApiKey, CreatedKey, KeyStore, NewKey, hash_key
from gateway.store_calls import StoreCalls

log = logging.getLogger(__name__)

SPEND_WRITE_S = 1.0  # how often accumulated spend is written to the database
MAX_CACHED = 10_000  # looked-up keys kept in memory, unknown ones included (so random keys cannot flood the DB)



_in_thread = StoreCalls(
    "api keys", "API keys cannot be read or changed right now; retry shortly.", "key_store_unavailable"
)


class KeyGuard:
    """Who calls /v1 and whether they may: authentication, the admin scope, budgets and rate limits."""

    def __init__(self, store: KeyStore, limiter: RateLimiter, *, required: bool, cache_ttl_s: float) -> None:
        self.store = store
        self.limiter = limiter
        self.required = required
        # key hash -> the key, or None for an unknown one: trusted without asking the database for a TTL.
        self._fresh: TTLCache[str, ApiKey | None] = TTLCache(MAX_CACHED, ttl=cache_ttl_s)
        # The same, kept past the TTL: what answers while the database is down.
        self._last_known: LRUCache[str, ApiKey | None] = LRUCache(MAX_CACHED)
        self._spent: dict[int, float] = {}  # spend in the database as last seen; it only grows, so the max wins
        self._unwritten: defaultdict[int, float] = defaultdict(float)
        self._writing: dict[int, float] = {}
        self._counting: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._writer = asyncio.create_task(self._write_periodically(), name="api-key-spend-writer")

    async def stop(self) -> None:
        self._stopping.set()
        if self._writer:
            await self._writer
        await asyncio.gather(*self._counting, return_exceptions=True)
        if self._unwritten:
            log.warning("api keys: %.6f USD of spend could not be written (database unavailable)",
                        sum(self._unwritten.values()))

    # -- authentication -------------------------------------------------------------------------
    async def authenticate(self, key: str | None) -> ApiKey:
        if not key:
            raise APIError(401, "You didn't provide an API key: send it as `Authorization: Bearer <key>` "
                           "(or `x-api-key: <key>`).",
                           code="invalid_api_key")
        found = await self._lookup(hash_key(key))
        if found is None:
            raise APIError(401, "Incorrect API key provided, or the key was revoked.", code="invalid_api_key")
        return found

    async def _lookup(self, key_hash: str) -> ApiKey | None:
        try:
            return self._fresh[key_hash]
        except KeyError:  # never looked up, or longer ago than the TTL
            pass
        try:
            key = await _in_thread(self.store.find, key_hash)
        except APIError:
            if key_hash not in self._last_known:
                raise
            # The last known state beats refusing every caller during an outage; ask again after a TTL.
            key = self._last_known[key_hash]
        else:
            self._last_known[key_hash] = key
            if key is not None:
                self._spent[key.id] = max(self._spent.get(key.id, 0.0), key.spent_usd)
        self._fresh[key_hash] = key
        return key

    async def revoke(self, key_id: int) -> ApiKey | None:
        """Revoke a key; this replica stops accepting it at once, the others within the cache TTL."""
        key = await _in_thread(self.store.revoke, key_id)
        for cache in (self._fresh, self._last_known):
            for key_hash in [h for h, k in cache.items() if k is not None and k.id == key_id]:
                del cache[key_hash]
        return key

    # -- budget and rate limits -----------------------------------------------------------------
    def spent(self, key: ApiKey) -> float:
        """What the key has spent as far as this replica knows, including spend not yet written."""
        return (self._spent.get(key.id, key.spent_usd) + self._unwritten.get(key.id, 0.0)
                + self._writing.get(key.id, 0.0))

    async def admit(self, key: ApiKey) -> None:
        """Raises 429 when the key is over its budget (insufficient_quota) or a rate limit (rate_limit_exceeded)."""
        if key.budget_usd is not None and self.spent(key) >= key.budget_usd:
            log.info("api key %d (%s...) refused: budget of %s USD used", key.id, key.key_prefix, key.budget_usd)
            # Not worth retrying: tell OpenAI's SDKs so (they retry other 429s).
            raise APIError(429, f"API key {key.key_prefix}... has used its budget of {key.budget_usd} USD.",
                           code="insufficient_quota", headers={"x-should-retry": "false"})
        refusal = await self.limiter.admit(key.id, key.rpm_limit, key.tpm_limit)
        if refusal is not None:
            limit = key.rpm_limit if refusal.limit == "requests" else key.tpm_limit
            log.info("api key %d (%s...) refused: over %s %s per minute", key.id, key.key_prefix, limit, refusal.limit)
            raise APIError(
                429,
                f"Rate limit reached for API key {key.key_prefix}...: {limit} {refusal.limit} per minute. "
                f"Retry after {refusal.retry_after_s} s.",
                code="rate_limit_exceeded",
                headers={"retry-after": str(refusal.retry_after_s)},
            )

    def charge(self, record: DecisionRecord) -> None:
        """Count a finished request against its key: its tokens toward the rate limit, its cost toward the budget."""
        if record.api_key_id is None:
            return
        if record.cost_usd:
            self._unwritten[record.api_key_id] += record.cost_usd
        tokens = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
        if tokens:
            task = asyncio.create_task(self.limiter.add_tokens(record.api_key_id, tokens))
            self._counting.add(task)
            task.add_done_callback(self._counting.discard)

    async def _write_periodically(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=SPEND_WRITE_S)
            await self._write_spend()

    async def _write_spend(self) -> None:
        if not self._unwritten:
            return
        self._writing, self._unwritten = dict(self._unwritten), defaultdict(float)
        try:
            totals = await asyncio.to_thread(self.store.add_spend, self._writing)
        except Exception as exc:  # noqa: BLE001 - keep the spend and retry on the next round
            log.warning("api keys: spend not written, database unavailable (%s); will retry", type(exc).__name__)
            for key_id, usd in self._writing.items():
                self._unwritten[key_id] += usd
        else:
            for key_id, total in totals.items():
                self._spent[key_id] = max(self._spent.get(key_id, 0.0), total)
        finally:
            self._writing = {}


# -- HTTP: who is calling ---------------------------------------------------------------------------
_bearer = HTTPBearer(auto_error=False, description="an API key from `moe keys create`")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]


def _guard(request: Request) -> KeyGuard:
    return request.app.state.keys


def presented_key(request: Request) -> str | None:
    """The key a request presents: `Authorization: Bearer <key>` (as HTTPBearer reads it), else Anthropic's
    `x-api-key` header, which Anthropic's SDKs send."""
    scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
    if scheme.lower() == "bearer" and token:
        return token
    return request.headers.get("x-api-key") or None


async def caller(request: Request, _: Credentials) -> ApiKey | None:
    """The key behind a /v1 request; None while keys are not required (MOE_REQUIRE_API_KEY=false). The bearer
    scheme is declared for the OpenAPI schema; `presented_key` reads the headers."""
    guard = _guard(request)
    if not guard.required:
        return None
    return await guard.authenticate(presented_key(request))


async def metered_caller(request: Request) -> ApiKey | None:
    """`caller`, admitted within its budget and rate limits: what the chat endpoint calls itself, on its hot path,
    where FastAPI's three nested dependencies (this, `caller`, the bearer scheme) cost about 0.1 ms a request.
    The endpoint declares the bearer scheme in its OpenAPI (`BEARER_SECURITY`)."""
    guard = _guard(request)
    if not guard.required:
        return None
    key = await guard.authenticate(presented_key(request))
    await guard.admit(key)
    return key


BEARER_SECURITY = [{_bearer.scheme_name: []}]


async def admin_caller(request: Request, _: Credentials) -> ApiKey:
    """Managing keys always takes an admin key, whether or not other requests need one."""
    key = await _guard(request).authenticate(presented_key(request))
    if not key.admin:
        raise APIError(403, "Managing API keys needs an admin key.", code="insufficient_permissions")
    return key


admin_routes = APIRouter(prefix="/v1/admin/keys", dependencies=[Depends(admin_caller)], tags=["admin"])


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ApiKey]


@admin_routes.get("")
async def list_keys(request: Request) -> KeyList:
    return KeyList(data=await _in_thread(_guard(request).store.list))


@admin_routes.post("", status_code=201)
async def create_key(new: NewKey, request: Request) -> CreatedKey:
    return await _in_thread(_guard(request).store.create, new)


@admin_routes.delete("/{key_id}")
async def revoke_key(key_id: int, request: Request) -> ApiKey:
    key = await _guard(request).revoke(key_id)
    if key is None:
        raise APIError(404, f"No API key with id {key_id}.", param="key_id", code="key_not_found")
    return key
