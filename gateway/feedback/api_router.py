"""`POST /v1/feedback`: HTTP only. Another tenant's decision answers 404, as if it did not exist."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from gateway.bodies import BodyReader, json_body
from gateway.errors import APIError
from gateway.feedback.protocol import Feedback, FeedbackRequest
from gateway.feedback.store import FeedbackStore, Owner, may_give_feedback
from gateway.keys.guard import caller
from gateway.keys.store import ApiKey
from gateway.services import Services
from gateway.store_calls import StoreCalls

feedback_routes = APIRouter()
_stored = StoreCalls("feedback", "Feedback cannot be stored right now; retry shortly.", "feedback_unavailable")


@feedback_routes.post("/v1/feedback", openapi_extra=json_body(FeedbackRequest))
async def give_feedback(request: Request, key: Annotated[ApiKey | None, Depends(caller)]) -> Feedback:
    bodies: BodyReader = request.app.state.bodies
    given = await bodies.read(await request.body(), FeedbackRequest)
    services: Services = request.app.state.services
    store = services.feedback
    owner = services.decision_log.recent_owner(given.decision_id) or await _logged_owner(
        store, given.decision_id, services.decision_log.flush_interval_s
    )
    if owner is None or not may_give_feedback(key, owner):
        raise APIError(404, f"No decision `{given.decision_id}`.", param="decision_id", code="decision_not_found")
    return await _stored(store.put, given, key)


async def _logged_owner(store: FeedbackStore, decision_id: str, flush_interval_s: float) -> Owner | None:
    """Who made the decision, from the log. A decision another replica served a moment ago is not there yet (its
    writer flushes every MOE_LOG_FLUSH_S): asked again for a few intervals before it counts as unknown, so a client
    behind a load balancer can give feedback at once."""
    deadline = time.monotonic() + max(1.0, 4 * flush_interval_s)
    while (owner := await _stored(store.owner, decision_id)) is None and time.monotonic() < deadline:
        await asyncio.sleep(flush_interval_s)
    return owner
