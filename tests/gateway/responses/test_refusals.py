"""Failures and bad input in OpenAI's error shape, the responses table's migration, any JSON body read or refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, inspect

from gateway.bodies import BodyError, read_body
from gateway.chat.protocol import MAX_MESSAGES
from gateway.errors import APIError
from gateway.migrate import downgrade, upgrade
from gateway.responses.protocol import ResponsesRequest
from gateway.responses.translate import to_chat
from tests.gateway.responses.support import TOOL, assert_openai_error
from tests.gateway.support import MATH_QUESTION, Gateway, decisions, expert, routed_config, running_gateway, wait_for


# -- failures ----------------------------------------------------------------------------------------------------
def test_a_stream_cut_midway_ends_with_error_then_failed(
    upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    experts = [expert("flaky", "broken", f"{upstream}/v1", domains=["other"])]
    with running_gateway(routed_config(experts, router_artifact), sqlite_url, tmp_path) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        events = list(client.responses.create(model="flaky", input=MATH_QUESTION, stream=True))
        kinds = [e.type for e in events]
        assert kinds[-2:] == ["error", "response.failed"] and "response.completed" not in kinds
        assert events[-2].code == "stream_interrupted" and "mid-stream" in events[-2].message
        failed = events[-1].response
        assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
        assert failed.output[0].status == "incomplete" and failed.output[0].content[0].text == "[broken] Solve"
        with pytest.raises(openai.NotFoundError):  # a failed response is not kept to continue
            client.responses.retrieve(failed.id)
    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the decision record")
    record = decisions(sqlite_url)[0]
    assert (record.status, record.http_status) == ("stream_error", 502)


def test_unknown_model_is_openai_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="gpt-nope", input="hi")
    assert info.value.code == "model_not_found" and info.value.param == "model"


GOOD: dict[str, Any] = {"model": "general", "input": "hi"}


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({**GOOD, "tools": [{"type": "web_search"}]}, "tools.0", "web_search"),
        ({**GOOD, "tools": [{**TOOL, "name": "x" * 65}]}, "tools.0.name", "at most 64"),
        ({**GOOD, "tool_choice": {"type": "file_search"}}, "tool_choice", "file_search"),
        ({**GOOD, "background": True}, "background", "background"),
        ({**GOOD, "conversation": "conv_1"}, "conversation", "previous_response_id"),
        ({**GOOD, "input": [{"type": "reasoning", "summary": []}]}, "input.0", "function_call_output"),
        ({**GOOD, "input": [{"role": "wizard", "content": "hi"}]}, "input.0", "role user"),
        ({**GOOD, "input": [{"role": ["user"], "content": "hi"}]}, "input.0", "role user"),
        ({**GOOD, "input": [5]}, "input.0", "role user"),
        (
            {**GOOD, "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
            "input.0.user.content.0.input_image",
            "image_url",
        ),
        (
            {**GOOD, "input": [{"role": "system", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input.0.system.content.0.type",
            "input_text",
        ),
        ({**GOOD, "input": [{"role": "user", "content": "hi"}] * (MAX_MESSAGES + 1)}, "input", "at most"),
        ({**GOOD, "input": []}, "input", "at least 1"),
        ({"model": "general"}, "input", "required"),
        ({**GOOD, "temperature": 3}, "temperature", "less than or equal to 2"),
        ({**GOOD, "max_output_tokens": 0}, "max_output_tokens", "greater than or equal to 1"),
        ({**GOOD, "metadata": {str(i): "v" for i in range(17)}}, "metadata", "at most 16"),
        (
            {**GOOD, "text": {"format": {"type": "json_schema", "name": "x"}}},
            "text.format.json_schema.schema",
            "required",
        ),
        ({**GOOD, "store": "yes"}, "store", "boolean"),
    ],
)
def test_bad_input_is_an_openai_400(gateway: Gateway, body: dict[str, Any], param: str, words: str) -> None:
    error = assert_openai_error(httpx.post(f"{gateway.v1}/responses", json=body), 400)
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_a_conversation_too_long_with_its_earlier_turns_is_a_400(client: openai.OpenAI, gateway: Gateway) -> None:
    first = client.responses.create(model="general", input="hi")
    body = {**GOOD, "previous_response_id": first.id, "input": [{"role": "user", "content": "x"}] * MAX_MESSAGES}
    error = assert_openai_error(httpx.post(f"{gateway.v1}/responses", json=body), 400)
    assert error["param"] == "input" and "at most" in error["message"]


def test_malformed_bodies_and_unknown_ids(gateway: Gateway) -> None:
    bad_json = httpx.post(f"{gateway.v1}/responses", content=b"{nope", headers={"content-type": "application/json"})
    assert_openai_error(bad_json, 400)
    assert_openai_error(httpx.post(f"{gateway.v1}/responses", json=["model", "general"]), 400)
    for method in ("GET", "DELETE"):
        assert assert_openai_error(httpx.request(method, f"{gateway.v1}/responses/resp_nope"), 404)["code"] == (
            "response_not_found"
        )
    unknown = httpx.post(f"{gateway.v1}/responses", json={**GOOD, "previous_response_id": "resp_nope"})
    assert assert_openai_error(unknown, 404)["param"] == "previous_response_id"


def test_migration_0009_goes_up_and_down(database_url: str) -> None:
    def tables() -> set[str]:
        engine = create_engine(database_url)
        try:
            return set(inspect(engine).get_table_names())
        finally:
            engine.dispose()

    upgrade(database_url, "0009")
    assert "responses" in tables()
    downgrade(database_url, "0008")
    assert "responses" not in tables()
    upgrade(database_url)
    assert "responses" in tables()


WORDS = [
    "user",
    "assistant",
    "system",
    "developer",
    "message",
    "function_call",
    "function_call_output",
    "input_text",
    "input_image",
    "output_text",
    "refusal",
    "function",
    "json_schema",
    "json_object",
    "text",
    "auto",
]
KEYS = [
    "type",
    "role",
    "content",
    "text",
    "image_url",
    "file_id",
    "call_id",
    "name",
    "arguments",
    "output",
    "refusal",
    "format",
    "schema",
]
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(WORDS)
    | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(KEYS), children, max_size=4),
    max_leaves=10,
)
ITEM = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(WORDS) | JSON, max_size=5)
FIELDS = {
    "input": st.lists(ITEM, min_size=1, max_size=3) | JSON,
    "tools": st.lists(ITEM, max_size=2) | JSON,
    "tool_choice": ITEM | JSON,
    "text": st.fixed_dictionaries({"format": ITEM}) | JSON,
    "instructions": JSON,
    "metadata": JSON,
    "background": JSON,
    "previous_response_id": JSON,
}


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(fields=st.fixed_dictionaries({}, optional=FIELDS))
def test_any_json_is_read_or_refused_never_crashes(fields: dict[str, Any]) -> None:
    """Whatever a body holds, reading it gives a request or a 400, and a request read translates or is a 400."""
    raw = json.dumps({"model": "general", "input": "hi", **fields}).encode()
    try:
        body = read_body(raw, ResponsesRequest)
    except BodyError:
        return
    try:
        to_chat(body, [])
    except APIError as error:
        assert error.status == 400
