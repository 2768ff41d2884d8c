"""Schemathesis fuzzes the gateway's own OpenAPI schema (valid and invalid inputs), every operation of it: no 5xx,
every error in its endpoint's protocol's shape (Anthropic's on /v1/messages, OpenAI's elsewhere); Hypothesis sends
every chat field at its bound and past it, and every answered request's record must reach PostgreSQL.

Cases come from schemathesis' hypothesis strategies; its pytest plugin is not used (it does not
load under this pytest version).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from gateway.chat import protocol
from gateway.errors import ANTHROPIC_PATHS
from migrations.schema import DeadLetterRow
from tests.gateway.support import decisions, routed_config, rows, running_gateway, wait_for

# Every operation the schema publishes, with valid input and, where it takes any, invalid input. The routed
# endpoints must answer valid input (200) and refuse invalid input (400): the cases really reach both sides.
ROUTED = {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/v1/messages/count_tokens"}
POSITIVE_ONLY = {("GET", "/v1/models"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
                 ("GET", "/v1/admin/keys")}
OPERATIONS = [
    ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/responses"),
    ("GET", "/v1/responses/{response_id}"), ("DELETE", "/v1/responses/{response_id}"),
    ("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"),
    ("POST", "/v1/files"), ("GET", "/v1/files"), ("GET", "/v1/files/{file_id}"), ("DELETE", "/v1/files/{file_id}"),
    ("GET", "/v1/files/{file_id}/content"), ("POST", "/v1/batches"), ("GET", "/v1/batches"),
    ("GET", "/v1/batches/{batch_id}"), ("POST", "/v1/batches/{batch_id}/cancel"), ("POST", "/v1/feedback"),
    ("POST", "/v1/admin/keys"), ("DELETE", "/v1/admin/keys/{key_id}"), *sorted(POSITIVE_ONLY),
]
CASES = [
    (method, path, mode) for method, path in OPERATIONS for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or (method, path) not in POSITIVE_ONLY
]


@pytest.fixture(scope="module")
def api_schema(upstream: str, router_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    workdir = tmp_path_factory.mktemp("fuzz")
    experts = [{"name": "general", "model": "echo", "api_base": f"{upstream}/v1", "domains": ["other"]}]
    with running_gateway(routed_config(experts, router_artifact), f"sqlite:///{workdir}/fuzz.db", workdir,
                         moe_files_dir=workdir / "files") as gw:
        loaded = schemathesis.openapi.from_url(f"{gw.base_url}/openapi.json")
        loaded.config.update(base_url=gw.base_url)
        yield loaded


def test_the_fuzz_covers_every_operation(api_schema: Any) -> None:
    published = {(method.upper(), path) for path, item in api_schema.raw_schema["paths"].items() for method in item}
    assert published == set(OPERATIONS)


def assert_protocol_shaped(path: str, body: Any) -> None:
    if path.startswith(ANTHROPIC_PATHS):
        assert set(body) == {"type", "error"} and body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"}, body
    else:
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=lambda v: getattr(v, "value", v))
def test_no_server_errors_and_protocol_shaped_errors(api_schema: Any, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    seen: dict[int, int] = {}

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        if mode is GenerationMode.POSITIVE and path in ROUTED and isinstance(case.body, dict):
            case.body["model"] = "moe-auto"  # random model names would only ever meet the 404
        response = case.call(timeout=20)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert_protocol_shaped(path, response.json())

    check()
    if path in ROUTED:
        # Invalid input really was rejected; valid input really was routed and answered.
        expected = 400 if mode is GenerationMode.NEGATIVE else 200
        assert seen.get(expected, 0) > 0, seen


# -- every field at its bound and past it, the decision log on PostgreSQL --------------------------

def _around(bound: int) -> st.SearchStrategy[int]:
    return st.sampled_from([0, 1, bound - 1, bound, bound + 1])


def _text(bound: int) -> st.SearchStrategy[str]:
    # NUL, which no PostgreSQL text column holds, and any other character JSON can carry.
    characters = st.characters(codec="utf-8") | st.just("\x00")
    return _around(bound).flatmap(lambda n: st.text(characters, min_size=n, max_size=n))


def _list(item: st.SearchStrategy[Any], bound: int) -> st.SearchStrategy[list[Any]]:
    return _around(bound).flatmap(lambda n: st.lists(item, min_size=n, max_size=n))


NUMBERS = st.floats() | st.integers(-(2**70), 2**70) | st.booleans()
MESSAGES = st.fixed_dictionaries({"role": st.just("user"), "content": _text(40)},
                                 optional={"name": _text(protocol.MAX_NAME)})
FIELDS = {
    "model": st.sampled_from(["moe-auto", "general"]) | _text(protocol.MAX_MODEL).map(lambda t: "moe-auto:" + t)
    | _text(protocol.MAX_MODEL),
    "messages": st.lists(MESSAGES, min_size=1, max_size=3) | _list(MESSAGES, protocol.MAX_MESSAGES),
}
OPTIONAL = {
    "temperature": NUMBERS, "top_p": NUMBERS, "max_tokens": NUMBERS | _around(2**31), "seed": NUMBERS,
    "n": _around(16), "presence_penalty": NUMBERS, "top_logprobs": _around(20),
    "stop": _text(20) | _list(_text(3), protocol.MAX_STOP),
    "logit_bias": _around(protocol.MAX_LOGIT_BIAS).flatmap(
        lambda n: st.dictionaries(st.integers(0, 10**6).map(str), NUMBERS, min_size=n, max_size=n)),
    "user": _text(protocol.MAX_ID), "stream": st.booleans(),
}


def test_every_answered_request_reaches_postgres(upstream: str, router_artifact: Path, postgres_url: str,
                                                tmp_path: Path) -> None:
    experts = [{"name": "general", "model": "echo", "api_base": f"{upstream}/v1", "domains": ["other"]}]
    # Prompts stored too: every character a client sends reaches a text column.
    with running_gateway(routed_config(experts, router_artifact), postgres_url, tmp_path, moe_log_prompts=True) as gw:
        _fuzz_then_check_records(gw.v1, postgres_url)


def _fuzz_then_check_records(v1: str, postgres_url: str) -> None:
    answered: list[str] = []
    statuses: dict[int, int] = {}

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(body=st.fixed_dictionaries(FIELDS, optional=OPTIONAL))
    def check(body: dict[str, Any]) -> None:
        # json.dumps writes NaN and Infinity as JSON has no words for them: the gateway must refuse them.
        response = httpx.post(f"{v1}/chat/completions", timeout=30,
                              content=json.dumps(body), headers={"content-type": "application/json"})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}, response.text
        if "x-moe-decision-id" in response.headers:
            answered.append(response.headers["x-moe-decision-id"])

    check()
    assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0, statuses  # both sides of the bounds were met
    wait_for(lambda: set(answered) <= {r.id for r in decisions(postgres_url)}, timeout_s=30,
             what=f"the {len(answered)} records of the answered requests in PostgreSQL")
    assert rows(postgres_url, DeadLetterRow, DeadLetterRow.id) == []

