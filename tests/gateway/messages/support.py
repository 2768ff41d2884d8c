"""The tools, questions and metric reading the Messages API tests share."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.support import Gateway

LOOKUP = {
    "name": "lookup",
    "description": "Looks a question up.",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
}
CLOCK = {"name": "clock", "description": "Tells the time.", "input_schema": {"type": "object"}}
CAPITAL = "What is the capital of France?"
HI = [{"role": "user", "content": "hi"}]


def metric(gw: Gateway, name: str, **labels: str) -> float:
    families = text_string_to_metric_families(httpx.get(f"{gw.base_url}/metrics", timeout=10).text)
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def served(expert_name: str) -> str:
    """The scripted upstream's model name for one of the healthy experts (tests/gateway/conftest.py)."""
    return f"echo-{expert_name}"
