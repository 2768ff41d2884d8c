"""The tools, schema and checks the Responses API tests share."""

from __future__ import annotations

from typing import Any

import httpx

from tests.gateway.support import decisions, wait_for

TOOL = {
    "type": "function",
    "name": "lookup",
    "description": "Look a fact up.",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    "strict": True,
}
SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"], "additionalProperties": False}


def record_of(database: str, decision_id: str) -> Any:
    wait_for(lambda: any(r.id == decision_id for r in decisions(database)), what=f"decision {decision_id}")
    return next(r for r in decisions(database) if r.id == decision_id)


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]
