"""Legacy completions (`POST /v1/completions`) through the official openai SDK: routed on the prompt like a chat
completion, answered as `text_completion`s (plain, streamed, several prompts), and refused with OpenAI's 400 where a
chat model cannot answer what is asked."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.support import (
    HISTORY_QUESTION,
    MATH_QUESTION,
    Gateway,
    decisions,
    expert,
    routed_config,
    running_gateway,
    wait_for,
)
from tests.gateway.test_shutdown import moe_serve


@pytest.fixture
def gateway(
    healthy_experts: list[dict[str, Any]], upstream: str, router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> Iterator[Gateway]:
    experts = [
        *healthy_experts,
        expert("down", "echo-fail500", f"{upstream}/v1"),
        expert("flaky", "echo-broken", f"{upstream}/v1"),
        expert("slow", "echo-slow", f"{upstream}/v1"),
    ]
    with running_gateway(routed_config(experts, router_artifact), sqlite_url, tmp_path) as gw:
        yield gw


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)


def test_a_prompt_is_routed_and_answered_as_a_text_completion(client: openai.OpenAI, sqlite_url: str) -> None:
    raw = client.completions.with_raw_response.create(model="moe-auto", prompt=MATH_QUESTION, max_tokens=64)
    completion = raw.parse()
    assert raw.headers["x-moe-expert"] == "stem"
    assert raw.headers["x-moe-router"].startswith("embedding-domain@")
    assert completion.id == f"cmpl-{raw.headers['x-moe-decision-id']}"
    assert completion.object == "text_completion" and completion.model == "stem"
    # The prompt reached the expert as one user message, after the expert's system prompt.
    (choice,) = completion.choices
    assert choice.text == f"[echo-stem|STEM] {MATH_QUESTION}"
    assert (choice.index, choice.finish_reason, choice.logprobs) == (0, "stop", None)
    assert completion.usage is not None and completion.usage.completion_tokens == len(choice.text.split())

    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the decision record")
    (record,) = decisions(sqlite_url)
    assert record.id == raw.headers["x-moe-decision-id"]
    assert (record.chosen_expert, record.status, record.http_status, record.stream) == ("stem", "ok", 200, False)
    assert record.virtual_model == "moe-auto" and record.ranked[0]["expert"] == "stem"
    assert record.completion_tokens == completion.usage.completion_tokens


def test_max_tokens_defaults_to_16_as_openais(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="moe-auto", prompt=HISTORY_QUESTION)
    (choice,) = completion.choices
    # The scripted expert counts a word as a token and stops at max_tokens.
    assert choice.text == " ".join(f"[echo-humanities] {HISTORY_QUESTION}".split()[:16])
    assert choice.finish_reason == "length"


def test_streamed_with_usage(client: openai.OpenAI, sqlite_url: str) -> None:
    with client.completions.with_streaming_response.create(
        model="moe-auto", prompt=HISTORY_QUESTION, max_tokens=64, stream=True, stream_options={"include_usage": True}
    ) as response:
        assert response.headers["x-moe-expert"] == "humanities"
        decision_id = response.headers["x-moe-decision-id"]
        chunks = list(response.parse())
    assert all(c.object == "text_completion" and c.id == f"cmpl-{decision_id}" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == f"[echo-humanities] {HISTORY_QUESTION}"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    *texts, last = chunks
    assert all(c.choices and c.model == "humanities" for c in texts)
    assert last.choices == [] and last.usage is not None and last.usage.completion_tokens > 0

    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the decision record")
    (record,) = decisions(sqlite_url)
    assert (record.id, record.stream, record.status, record.chosen_expert) == (decision_id, True, "ok", "humanities")
    assert record.completion_tokens == last.usage.completion_tokens and record.ttft_ms is not None


def test_streamed_without_usage_ends_with_done(gateway: Gateway) -> None:
    body = {"model": "moe-auto", "prompt": MATH_QUESTION, "stream": True}
    with httpx.stream("POST", f"{gateway.v1}/completions", json=body, timeout=10) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["choices"] and "usage" not in c for c in chunks)
    # Text and the ending only: the expert's opening chunk (a role, no text) has no place in a text stream.
    assert all(c["choices"][0]["text"] or c["choices"][0]["finish_reason"] for c in chunks)


def test_several_prompts_are_routed_one_by_one_and_answered_together(client: openai.OpenAI, sqlite_url: str) -> None:
    raw = client.completions.with_raw_response.create(
        model="moe-auto", prompt=[MATH_QUESTION, HISTORY_QUESTION], max_tokens=64
    )
    completion = raw.parse()
    assert [c.text for c in completion.choices] == [
        f"[echo-stem|STEM] {MATH_QUESTION}",
        f"[echo-humanities] {HISTORY_QUESTION}",
    ]
    assert [c.index for c in completion.choices] == [0, 1]
    assert raw.headers["x-moe-expert"] == "stem,humanities" and completion.model == "stem,humanities"
    assert raw.headers["x-moe-router"].startswith("embedding-domain@")
    ids = raw.headers["x-moe-decision-id"].split(",")
    assert completion.id == f"cmpl-{ids[0]}"

    wait_for(lambda: len(decisions(sqlite_url)) == 2, what="one decision record per prompt")
    records = {r.id: r for r in decisions(sqlite_url)}
    assert [records[i].chosen_expert for i in ids] == ["stem", "humanities"]
    assert completion.usage is not None
    assert completion.usage.total_tokens == sum(records[i].prompt_tokens + records[i].completion_tokens for i in ids)


def test_several_prompts_number_their_choices_per_n(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="stem", prompt=["one", "two"], n=2)
    # The scripted expert answers one choice whatever n asks: prompt i's choices start at i * n.
    assert [(c.index, c.text) for c in completion.choices] == [(0, "[echo-stem|STEM] one"), (2, "[echo-stem|STEM] two")]


def test_a_client_leaving_settles_every_prompts_record(gateway: Gateway, sqlite_url: str) -> None:
    with pytest.raises(httpx.ReadTimeout):  # the expert takes 5 s
        httpx.post(f"{gateway.v1}/completions", json={"model": "slow", "prompt": ["a", "b"]}, timeout=1)
    wait_for(lambda: len(decisions(sqlite_url)) == 2, what="one record per prompt")
    assert [(r.status, r.http_status) for r in decisions(sqlite_url)] == [("client_disconnected", 499)] * 2


def test_the_shutdown_drain_answers_every_prompt_503(
    upstream: str, router_artifact: Path, postgres_url: str, tmp_path: Path
) -> None:
    experts = [expert("slow", "slow-general", f"{upstream}/v1")]  # answers after SLOW_S
    body = {"model": "slow", "prompt": ["a", "b"]}
    with (
        moe_serve(experts, router_artifact, tmp_path, postgres_url, MOE_DRAIN_S="1", MOE_LOG_FLUSH_S="600") as gw,
        ThreadPoolExecutor(1) as pool,
    ):
        cut_off = pool.submit(httpx.post, f"{gw.v1}/completions", json=body, timeout=30)
        wait_for(lambda: "llm_requests_in_flight 1.0" in httpx.get(f"{gw.base_url}/metrics").text, what="the request")
        gw.process.send_signal(signal.SIGTERM)
        assert gw.process.wait(timeout=30) == -signal.SIGTERM
    response = cut_off.result()
    assert response.status_code == 503 and response.headers["retry-after"] == "1", response.text
    assert response.json()["error"]["code"] == "shutting_down"
    assert [(r.status, r.http_status) for r in decisions(postgres_url)] == [("shutdown", 503)] * 2


def test_a_failing_prompt_fails_the_request_in_openais_shape(gateway: Gateway, sqlite_url: str) -> None:
    # Not routed: the expert is named, and it answers 500.
    response = httpx.post(f"{gateway.v1}/completions", json={"model": "down", "prompt": "hi"}, timeout=10)
    assert response.status_code == 502
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.json()["error"]["code"] == "experts_unavailable"
    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the decision record")
    assert decisions(sqlite_url)[0].id == response.headers["x-moe-decision-id"]
    assert decisions(sqlite_url)[0].status == "error"


def test_a_broken_stream_ends_with_an_error_event(gateway: Gateway, sqlite_url: str) -> None:
    body = {"model": "flaky", "prompt": "one two three four", "stream": True}
    with httpx.stream("POST", f"{gateway.v1}/completions", json=body, timeout=10) as response:
        *lines, done = [line for line in response.iter_lines() if line]
    events = [json.loads(line.removeprefix("data: ")) for line in lines]
    assert events[-1]["error"]["code"] == "stream_interrupted" and done == "data: [DONE]"
    assert all(e["object"] == "text_completion" for e in events[:-1])
    wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the decision record")
    assert decisions(sqlite_url)[0].status == "stream_error"


BAD = {
    "token-ids": ({"prompt": [1, 2, 3]}, "prompt", "Token-id prompts"),
    "token-id-lists": ({"prompt": [[1, 2], [3]]}, "prompt", "Token-id prompts"),
    "several-prompts-streamed": ({"prompt": ["a", "b"], "stream": True}, "prompt", "takes one prompt"),
    "echo": ({"prompt": "a", "echo": True}, "echo", "echo is not supported"),
    "suffix": ({"prompt": "a", "suffix": "end"}, "suffix", "suffix is not supported"),
    "logprobs": ({"prompt": "a", "logprobs": 1}, "logprobs", "/v1/chat/completions"),
    "best-of": ({"prompt": "a", "best_of": 2}, "best_of", "ask for several with n"),
    "too-many-prompts": ({"prompt": ["a"] * 17}, "prompt", "at most 16"),
    "empty-prompt-list": ({"prompt": []}, "prompt", None),
    "max-tokens-zero": ({"prompt": "a", "max_tokens": 0}, "max_tokens", None),
}


@pytest.mark.parametrize(("fields", "param", "says"), BAD.values(), ids=BAD.keys())
def test_what_a_chat_model_cannot_answer_is_a_400_naming_the_field(
    client: openai.OpenAI, sqlite_url: str, fields: dict[str, Any], param: str, says: str | None
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="moe-auto", **fields)
    assert refused.value.param == param and refused.value.type == "invalid_request_error"
    assert says is None or says in refused.value.message
    # Refused before routing: the next request's record is the only one.
    client.completions.create(model="moe-auto", prompt="hi")
    wait_for(lambda: len(decisions(sqlite_url)) > 0, what="the next request's record")
    assert len(decisions(sqlite_url)) == 1


def test_accepted_no_ops_are_not_refused(client: openai.OpenAI) -> None:
    completion = client.completions.create(
        model="moe-auto",
        prompt=MATH_QUESTION,
        echo=False,
        suffix="",
        best_of=1,
        user="tester",
        seed=3,
        stop=["\n\n"],
        temperature=0.5,
        top_p=0.9,
        presence_penalty=0.1,
        frequency_penalty=0.1,
        logit_bias={"50256": -100},
        max_tokens=None,
    )
    assert completion.choices[0].text == f"[echo-stem|STEM] {MATH_QUESTION}"


def test_unknown_model_is_openais_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-nope", prompt=["a", "b"])
    assert info.value.code == "model_not_found" and info.value.param == "model"
