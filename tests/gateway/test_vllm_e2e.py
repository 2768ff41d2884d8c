"""End to end through a real vLLM CPU server running SmolLM2-135M-Instruct: the embedded default config.

One server (started once for the module, ~75-150 s) serves the three default experts under
their own names; the gateway in front of it routes with the real embedding router.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from bench.upstream import free_port
from gateway.config import DEFAULT_CONFIG, SynthesisConfig, VirtualModelConfig, load_config
from tests.gateway.support import HISTORY_QUESTION, MATH_QUESTION, Gateway, decisions, running_gateway, wait_for
from tests.gateway.vllm_server import vllm_server

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def default_experts() -> Iterator[None]:
    with vllm_server(load_config(DEFAULT_CONFIG)):
        yield


@pytest.fixture
def gateway(default_experts: None, router_artifact: Path, sqlite_url: str, tmp_path: Path) -> Iterator[Gateway]:
    config = load_config(DEFAULT_CONFIG)
    routers = tuple(r.model_copy(update={"artifact": router_artifact}) for r in config.routers)
    with running_gateway(config.model_copy(update={"routers": routers}), sqlite_url, tmp_path) as gw:
        yield gw


def test_openai_sdk_through_real_vllm(gateway: Gateway, sqlite_url: str) -> None:
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="moe-auto", messages=[{"role": "user", "content": MATH_QUESTION}], max_tokens=24, temperature=0
    )
    completion = raw.parse()
    assert raw.headers["x-moe-expert"] == "stem"
    assert completion.choices[0].message.content.strip()
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 24

    with client.chat.completions.with_streaming_response.create(
        model="moe-auto", messages=[{"role": "user", "content": HISTORY_QUESTION}], max_tokens=24,
        stream=True, stream_options={"include_usage": True},
    ) as response:
        assert response.headers["x-moe-expert"] == "humanities"
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    wait_for(lambda: len(decisions(sqlite_url)) == 2, what="both records")
    rows = decisions(sqlite_url)
    assert [r.chosen_expert for r in rows] == ["stem", "humanities"]
    assert all(r.status == "ok" and r.completion_tokens and r.ttft_ms for r in rows)


def test_every_protocol_streams_through_real_vllm(gateway: Gateway, sqlite_url: str) -> None:
    """Responses, Anthropic Messages and legacy completions, each streamed through the router to the real expert."""
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    with client.responses.with_streaming_response.create(
        model="moe-auto", input=MATH_QUESTION, max_output_tokens=24, temperature=0, stream=True
    ) as response:
        assert response.headers["x-moe-expert"] == "stem"
        events = list(response.parse())
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text.strip() and events[-1].type in {"response.completed", "response.incomplete"}
    assert events[-1].response.usage.output_tokens > 0

    messages = anthropic.Anthropic(base_url=gateway.base_url, api_key="unused", max_retries=0)
    with messages.messages.stream(
        model="moe-auto", max_tokens=24, messages=[{"role": "user", "content": HISTORY_QUESTION}]
    ) as stream:
        assert stream.response.headers["x-moe-expert"] == "humanities"
        message = stream.get_final_message()
    assert message.content[0].text.strip() and message.stop_reason in {"end_turn", "max_tokens"}  # type: ignore[union-attr]
    assert message.usage.output_tokens > 0

    with client.completions.with_streaming_response.create(
        model="moe-auto", prompt=MATH_QUESTION, max_tokens=24, temperature=0, stream=True
    ) as response:
        assert response.headers["x-moe-expert"] == "stem"
        chunks = list(response.parse())
    assert "".join(c.choices[0].text for c in chunks if c.choices).strip()

    wait_for(lambda: len(decisions(sqlite_url)) == 3, what="the three records")
    rows = decisions(sqlite_url)
    assert [r.chosen_expert for r in rows] == ["stem", "humanities", "stem"]
    assert all(r.status == "ok" and r.stream and r.completion_tokens and r.ttft_ms for r in rows)


def test_a_batch_through_real_vllm(gateway: Gateway, sqlite_url: str) -> None:
    """OpenAI's Batch API: uploaded, routed per line, answered by the real experts, read back by custom_id."""
    client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
    lines = [
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "moe-auto", "messages": [{"role": "user", "content": question}], "max_tokens": 16}}
        for custom_id, question in (("math", MATH_QUESTION), ("history", HISTORY_QUESTION))
    ]
    source = client.files.create(file=("in.jsonl", "".join(json.dumps(line) + "\n" for line in lines).encode()),
                                 purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    wait_for(lambda: client.batches.retrieve(batch.id).status == "completed", timeout_s=240, what="the batch")
    done = client.batches.retrieve(batch.id)
    assert done.output_file_id and done.request_counts and done.request_counts.completed == 2
    answers = {
        line["custom_id"]: line["response"]["body"]
        for line in map(json.loads, client.files.content(done.output_file_id).text.splitlines())
    }
    assert {k: v["model"] for k, v in answers.items()} == {"math": "stem", "history": "humanities"}
    assert all(v["choices"][0]["message"]["content"].strip() for v in answers.values())
    wait_for(lambda: len(decisions(sqlite_url)) == 2, what="the two records")


def test_synthesis_streams_through_real_vllm(
    default_experts: None, router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    """Two recruited SmolLM2 experts answer, the aggregator streams an answer written from theirs."""
    config = load_config(DEFAULT_CONFIG)
    routers = tuple(r.model_copy(update={"artifact": router_artifact}) for r in config.routers)
    synth = VirtualModelConfig(name="moe-synth", router=routers[0].name,
                               synthesis=SynthesisConfig(k=2, aggregator="general", deadline_s=120))
    config = config.model_copy(update={"routers": routers, "virtual_models": (*config.virtual_models, synth)})
    with running_gateway(config, sqlite_url, tmp_path) as gateway:
        client = openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)
        with client.chat.completions.with_streaming_response.create(
            model="moe-synth", messages=[{"role": "user", "content": MATH_QUESTION}], max_tokens=24, temperature=0,
            stream=True, stream_options={"include_usage": True},
        ) as response:
            assert response.headers["x-moe-expert"] == "general"
            assert len(response.headers["x-moe-recruited"].split(",")) == 2
            chunks = list(response.parse())
        wait_for(lambda: len(decisions(sqlite_url)) == 1, what="the record")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and chunks[-1].usage is not None
    (row,) = decisions(sqlite_url)
    fan_out, final = row.calls[:2], row.calls[2]
    assert [c.status for c in row.calls] == ["ok", "ok", "ok"] and final.expert == "general"
    # The aggregator read the question plus both answers: a longer prompt than either expert's.
    assert final.prompt_tokens > max(c.prompt_tokens for c in fan_out) + max(c.completion_tokens for c in fan_out)


def test_the_readme_quickstart_command(default_experts: None, router_artifact: Path, tmp_path: Path) -> None:
    """`moe up --once` (what `make run` runs, minus serving forever) in a fresh working directory."""
    (tmp_path / "var/routers").mkdir(parents=True)
    (tmp_path / "var/routers/embedding-domain").symlink_to(router_artifact)
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/var/moe.db"}
    env.pop("MOE_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "up", "--once", "--port", str(free_port())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "routed to stem" in result.stderr  # the demo question is about derivatives
    assert "A:" in result.stderr
    assert len(decisions(env["DATABASE_URL"])) == 1
