"""Per-key requests and tokens per minute, shared by every gateway replica through Redis.

Counting uses fixed one-minute windows: one Redis hash per key and minute, with a `requests` and
a `tokens` field, that expires after the window. Admission runs as a Lua script rather than a
MULTI pipeline because it reads before it writes: a request refused for tokens must not be
counted, and a MULTI block cannot branch on a value it reads; the script does the read, the
decision and the increment atomically in one round trip, whichever replica sends it.

A request is refused when the window already holds `rpm` requests, or when the tokens reported by
earlier responses in the window reach `tpm` (a response's size is known only once it is done).
While Redis is down (or not configured) each process counts on its own with the same rule, so with
N replicas a key may get up to N times its limit until Redis is back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from gateway.shared_state import SharedState

WINDOW_S = 60

# KEYS[1]: the key's counters for this window. ARGV: rpm, tpm (0 = unlimited), expiry in seconds.
# Returns 0 when admitted, 1 when over the request limit, 2 when over the token limit.
_ADMIT = """
local tpm = tonumber(ARGV[2])
if tpm > 0 and tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0') >= tpm then return 2 end
local requests = redis.call('HINCRBY', KEYS[1], 'requests', 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
local rpm = tonumber(ARGV[1])
if rpm > 0 and requests > rpm then return 1 end
return 0
"""

# KEYS[1]: the key's counters for this window. ARGV: tokens, expiry in seconds. Returns the window's tokens.
_ADD_TOKENS = """
local tokens = redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return tokens
"""

_REFUSED = {1: "requests", 2: "tokens"}


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused ("requests" or "tokens") and when the window resets."""

    limit: str
    retry_after_s: int


@dataclass
class _Window:
    number: int
    requests: int = 0
    tokens: int = 0


class RateLimiter:
    def __init__(self, state: SharedState, window_s: int = WINDOW_S) -> None:
        self.state = state
        self.window_s = window_s
        self._local: dict[int, _Window] = {}  # the per-process fallback, current window only

    async def admit(self, key_id: int, rpm: int | None, tpm: int | None) -> Refusal | None:
        """Count one request for the key; a Refusal when it is over a limit (None when admitted)."""
        if rpm is None and tpm is None:
            return None
        now = time.time()
        number = int(now // self.window_s)
        verdict = await self.state.run_script(
            _ADMIT, [self._redis_key(key_id, number)], [rpm or 0, tpm or 0, self.window_s * 2]
        )
        if verdict is None:
            verdict = self._admit_locally(key_id, number, rpm, tpm)
        if verdict == 0:
            return None
        return Refusal(_REFUSED[int(verdict)], max(1, math.ceil((number + 1) * self.window_s - now)))

    async def add_tokens(self, key_id: int, tokens: int) -> None:
        """Count a finished response's tokens in the current window."""
        number = int(time.time() // self.window_s)
        counted = await self.state.run_script(
            _ADD_TOKENS, [self._redis_key(key_id, number)], [tokens, self.window_s * 2]
        )
        if counted is None:
            self._window(key_id, number).tokens += tokens

    def _redis_key(self, key_id: int, number: int) -> str:
        return f"{self.state.prefix}:ratelimit:{key_id}:{number}"

    def _window(self, key_id: int, number: int) -> _Window:
        window = self._local.get(key_id)
        if window is None or window.number != number:
            window = self._local[key_id] = _Window(number)
        return window

    def _admit_locally(self, key_id: int, number: int, rpm: int | None, tpm: int | None) -> int:
        window = self._window(key_id, number)
        if tpm is not None and window.tokens >= tpm:
            return 2
        window.requests += 1
        return 1 if rpm is not None and window.requests > rpm else 0
