"""Query and answer text kept per virtual model (`store_text`), redacted by the operator's hook before it reaches the
database or a spill file; the log keeps no text elsewhere unless MOE_LOG_PROMPTS says so."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.config import ConfigError, GatewayConfig, StoreTextConfig, load_config
from gateway.decisions.log import DecisionLog, make_engine
from gateway.decisions.record import DecisionRecord
from migrations.schema import DecisionRow
from tests.gateway.support import MATH_QUESTION, decisions, running_gateway

EMAIL = "ada@example.org"
QUESTION = f"{MATH_QUESTION} Mail the answer to {EMAIL}."
HOOK = "tests.gateway.test_text_storage:mask_emails"


def mask_emails(text: str) -> str:
    return re.sub(r"\S+@\S+\.\w+", "<email>", text)


def refuse(text: str) -> str:
    raise RuntimeError("the redaction service is down")


def not_text(text: str) -> bytes:
    return text.encode()


def refuse_questions(text: str) -> str:
    if "?" in text:
        raise ValueError("cannot redact a question")
    return text


def two_models(experts: list[dict[str, Any]], artifact: Path) -> GatewayConfig:
    """`kept` keeps redacted text for 30 days, `plain` keeps none: the same router behind both."""
    return GatewayConfig.model_validate({
        "experts": experts,
        "routers": [{"name": "embedding", "artifact": str(artifact)}],
        "virtual_models": [{"name": "kept", "router": "embedding",
                            "store_text": {"retention_days": 30, "redact": HOOK}},
                           {"name": "plain", "router": "embedding"}],
    })


def ask(v1: str, model: str, stream: bool = False) -> str:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": QUESTION}]}
    response = httpx.post(f"{v1}/chat/completions", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.headers["x-moe-decision-id"]


def by_id(database_url: str) -> dict[str, DecisionRow]:
    return {row.id: row for row in decisions(database_url)}


def test_only_the_opted_in_virtual_model_keeps_text_and_it_is_redacted(
    database_url: str, healthy_experts: list[dict[str, Any]], router_artifact: Path, tmp_path: Path
) -> None:
    with running_gateway(two_models(healthy_experts, router_artifact), database_url, tmp_path) as gw:
        kept, streamed, plain = ask(gw.v1, "kept"), ask(gw.v1, "kept", stream=True), ask(gw.v1, "plain")
    rows = by_id(database_url)  # shutdown flushed the log
    masked = QUESTION.replace(EMAIL, "<email>")
    assert json.loads(rows[kept].prompt or "") == [{"role": "user", "content": masked}]
    assert rows[kept].answer == f"[echo-stem|STEM] {masked}"  # the echo upstream repeats the question
    assert json.loads(rows[streamed].prompt or "") == [{"role": "user", "content": masked}]
    assert rows[streamed].answer == f"[echo-stem|STEM] {masked}"
    assert (rows[plain].prompt, rows[plain].answer) == (None, None)
    assert all(EMAIL not in (row.prompt or "") + (row.answer or "") for row in rows.values())


def test_moe_log_prompts_keeps_every_requests_text_and_a_virtual_models_own_rule_still_applies(
    sqlite_url: str, healthy_experts: list[dict[str, Any]], router_artifact: Path, tmp_path: Path
) -> None:
    config = two_models(healthy_experts, router_artifact)
    with running_gateway(config, sqlite_url, tmp_path, moe_log_prompts=True) as gw:
        kept, plain = ask(gw.v1, "kept"), ask(gw.v1, "plain")
    rows = by_id(sqlite_url)
    assert EMAIL in (rows[plain].prompt or "") and EMAIL in (rows[plain].answer or "")
    assert EMAIL not in (rows[kept].prompt or "") and "<email>" in (rows[kept].prompt or "")


@pytest.mark.parametrize("hook", ["refuse", "not_text"])
def test_a_failing_hook_costs_the_text_never_the_record(hook: str) -> None:
    store = StoreTextConfig(redact=f"tests.gateway.test_text_storage:{hook}")
    record = DecisionRecord("kept", "0" * 64, False, store_text=store, messages=[{"role": "user", "content": QUESTION}])
    record.keep_answer(QUESTION)
    row = record.as_row()
    assert (row["prompt"], row["answer"]) == (None, None)
    assert row["requested_model"] == "kept"


def test_an_answer_is_not_kept_without_its_prompt() -> None:
    """Retention finds kept text by the prompt: an answer kept alone would outlive it."""
    store = StoreTextConfig(redact="tests.gateway.test_text_storage:refuse_questions")
    record = DecisionRecord("kept", "0" * 64, False, store_text=store, messages=[{"role": "user", "content": QUESTION}])
    record.keep_answer("x = 5")
    assert (record.as_row()["prompt"], record.as_row()["answer"]) == (None, None)


def test_text_parts_are_redacted_one_by_one_and_the_prompt_stays_messages() -> None:
    store = StoreTextConfig(redact=HOOK)
    messages = [{"role": "system", "content": f"Reply to {EMAIL}"},
                {"role": "user", "content": [{"type": "text", "text": QUESTION},
                                             {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]},
                {"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
                                                      "function": {"name": "f", "arguments": "{}"}}]}]
    record = DecisionRecord("kept", "0" * 64, False, store_text=store, messages=messages)
    prompt = json.loads(record.as_row()["prompt"])
    assert prompt[0]["content"] == "Reply to <email>"
    assert prompt[1]["content"][0]["text"] == QUESTION.replace(EMAIL, "<email>")
    assert prompt[1]["content"][1] == messages[1]["content"][1] and prompt[2] == messages[2]
    assert messages[0]["content"] == f"Reply to {EMAIL}"  # the request's own messages are left as they were


def test_an_answer_is_kept_only_where_the_text_is() -> None:
    record = DecisionRecord("plain", "0" * 64, False, messages=[{"role": "user", "content": QUESTION}])
    record.keep_answer(QUESTION)
    assert (record.as_row()["prompt"], record.as_row()["answer"]) == (None, None)


async def test_spilled_records_hold_only_redacted_text(tmp_path: Path) -> None:
    """The database never answers (nothing listens on port 1): the records go to disk, redacted."""
    log = DecisionLog(make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none"), tmp_path / "spill")
    record = DecisionRecord("kept", "0" * 64, False, store_text=StoreTextConfig(redact=HOOK),
                            messages=[{"role": "user", "content": QUESTION}])
    record.keep_answer(QUESTION)
    await log.start()
    log.record(record)
    await log.stop()
    spilled = "".join(path.read_text() for path in log.spilled_files())
    assert record.id in spilled and "<email>" in spilled and EMAIL not in spilled
    assert DecisionRecord.from_json(spilled.strip()).answer == QUESTION.replace(EMAIL, "<email>")


@pytest.mark.parametrize(("redact", "message"), [
    ("tests.gateway.nowhere:mask", "No module named 'tests.gateway.nowhere'"),
    ("tests.gateway.test_text_storage:missing", "cannot import name 'missing'"),
    ("tests.gateway.test_text_storage:EMAIL", "Input should be callable"),
])
def test_a_bad_redaction_hook_is_a_config_error_naming_the_field(tmp_path: Path, redact: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "experts": [{"name": "a", "model": "m", "api_base": "http://127.0.0.1:9/v1"}],
        "routers": [{"name": "r", "artifact": "var/routers/x"}],
        "virtual_models": [{"name": "kept", "router": "r", "store_text": {"redact": redact}}],
    }))
    with pytest.raises(ConfigError, match=rf"virtual_models\.0\.store_text\.redact: .*{re.escape(message)}"):
        load_config(path)


def test_retention_is_a_whole_number_of_days(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention_days"):
        StoreTextConfig.model_validate({"retention_days": 0})
