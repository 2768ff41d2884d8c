"""Schemathesis fuzzes the gateway's own OpenAPI schema (valid and invalid inputs): no 5xx, every error OpenAI-shaped.

Cases come from schemathesis' hypothesis strategies; its pytest plugin is not used (it does not
load under this pytest version).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.conftest import routed_config, running_gateway

CHAT = ("POST", "/v1/chat/completions")
# Operations without parameters have no invalid input to generate.
CASES = [(*CHAT, GenerationMode.POSITIVE), (*CHAT, GenerationMode.NEGATIVE)] + [
    ("GET", path, GenerationMode.POSITIVE) for path in ("/v1/models", "/healthz", "/readyz")
]


@pytest.fixture(scope="module")
def api_schema(upstream: str, router_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    workdir = tmp_path_factory.mktemp("fuzz")
    experts = [{"name": "general", "model": "echo", "api_base": f"{upstream}/v1", "domains": ["other"]}]
    with running_gateway(routed_config(experts, router_artifact), f"sqlite:///{workdir}/fuzz.db", workdir) as gw:
        loaded = schemathesis.openapi.from_url(f"{gw.base_url}/openapi.json")
        loaded.config.update(base_url=gw.base_url)
        yield loaded


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=lambda v: getattr(v, "value", v))
def test_no_server_errors_and_openai_shaped_errors(api_schema: Any, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    seen: dict[int, int] = {}

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        if mode is GenerationMode.POSITIVE and isinstance(case.body, dict):
            case.body["model"] = "moe-auto"  # random model names would only ever meet the 404
        response = case.call(timeout=20)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, response.text
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error"}, body
            assert set(body["error"]) == {"message", "type", "param", "code"}, body

    check()
    if method == "POST":
        # Invalid input really was rejected; valid input really was routed and answered.
        expected = 400 if mode is GenerationMode.NEGATIVE else 200
        assert seen.get(expected, 0) > 0, seen
