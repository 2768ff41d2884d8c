"""An expert on a provider that does not speak the OpenAI API, called through litellm (`provider: litellm`):
here Anthropic's Messages API, played by the scripted upstream at a local address."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from bench.upstream import ANTHROPIC_KEY, RECEIVED
from tests.gateway.support import MATH_QUESTION, decisions, expert, routed_config, running_gateway
from tests.gateway.test_failures import REST, STEM


@pytest.fixture
def experts(upstream: str, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    monkeypatch.setenv("MOE_TEST_ANTHROPIC_KEY", ANTHROPIC_KEY)
    return [
        # No /v1: litellm adds Anthropic's /v1/messages itself.
        expert("claude", "anthropic/claude-scripted", upstream, provider="litellm", api_key_env="MOE_TEST_ANTHROPIC_KEY",
               domains=STEM, price_per_mtok=3.0),
        expert("general", "echo-general", f"{upstream}/v1", domains=REST),
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_a_litellm_expert_answers_routed_requests(experts: list[dict[str, Any]], router_artifact: Path,
                                                  sqlite_url: str, tmp_path: Path, stream: bool) -> None:
    before = RECEIVED["claude-scripted"]
    with running_gateway(routed_config(experts, router_artifact), sqlite_url, tmp_path) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": MATH_QUESTION}]
        if stream:
            with client.chat.completions.with_streaming_response.create(
                model="moe-auto", messages=messages, stream=True, stream_options={"include_usage": True}
            ) as response:
                chunks = list(response.parse())
                headers = response.headers
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            usage = chunks[-1].usage
        else:
            raw = client.chat.completions.with_raw_response.create(model="moe-auto", messages=messages)
            headers, completion = raw.headers, raw.parse()
            text, usage = completion.choices[0].message.content, completion.usage
    assert headers["x-moe-expert"] == "claude"
    assert text == f"[anthropic:claude-scripted] {MATH_QUESTION}"
    assert RECEIVED["claude-scripted"] == before + 1  # asked through the Messages API, with the key from the env
    assert usage is not None and usage.prompt_tokens == len(MATH_QUESTION.split())
    [record] = decisions(sqlite_url)
    assert (record.chosen_expert, record.status, record.stream) == ("claude", "ok", stream)
    assert record.cost_usd == pytest.approx((usage.prompt_tokens + usage.completion_tokens) * 3.0 / 1e6)


def test_a_key_the_provider_refuses_goes_back_to_the_client_without_fallback(experts: list[dict[str, Any]], router_artifact: Path,
                                                             sqlite_url: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOE_TEST_ANTHROPIC_KEY", "sk-ant-wrong")
    with running_gateway(routed_config(experts, router_artifact), sqlite_url, tmp_path) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as refused:
            client.chat.completions.create(model="moe-auto", messages=[{"role": "user", "content": MATH_QUESTION}])
    # The client reads which expert refused and the provider's own words, not litellm's class names.
    message = refused.value.body["message"]  # type: ignore[index]
    assert "claude:" in message and "litellm." not in message and "Exception - " not in message
    [record] = decisions(sqlite_url)
    assert [(c.expert, c.status) for c in record.calls] == [("claude", "upstream_4xx")]
