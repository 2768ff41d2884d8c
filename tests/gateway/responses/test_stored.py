"""Stored responses: continued, read, deleted, pruned past their retention, and kept per tenant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import create_engine, update
from typer.testing import CliRunner

from gateway.cli import app as cli
from migrations.schema import ResponseRow
from tests.gateway.support import Gateway, expert, issue_key, routed_config, running_gateway


# -- stored responses ----------------------------------------------------------------------------------------------
def test_store_continue_get_and_delete(client: openai.OpenAI, gateway: Gateway, sent: list[dict[str, Any]]) -> None:
    first = client.responses.create(model="general", input="My name is Ada.", instructions="be brief")
    second = client.responses.create(model="general", input="What is my name?", previous_response_id=first.id)
    # The earlier turn and its answer come first; its instructions were its own.
    assert sent[1]["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "[echo-general|be brief] My name is Ada."},
        {"role": "user", "content": "What is my name?"},
    ]
    third = client.responses.create(model="general", input="And now?", previous_response_id=second.id)
    assert [m["content"] for m in sent[2]["messages"]][-3:] == [
        "What is my name?",
        "[echo-general] What is my name?",
        "And now?",
    ]

    retrieved = client.responses.retrieve(first.id)
    assert retrieved.id == first.id and retrieved.output_text == first.output_text
    assert retrieved.model_dump() == first.model_dump()

    deleted = httpx.delete(f"{gateway.v1}/responses/{first.id}")
    assert deleted.status_code == 200 and deleted.json() == {"id": first.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as gone:
        client.responses.create(model="general", input="hi", previous_response_id=first.id)
    assert gone.value.code == "response_not_found" and gone.value.param == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(first.id)
    assert client.responses.retrieve(third.id).previous_response_id == second.id  # the others stay


def test_a_response_past_its_retention_is_pruned_and_then_unknown(client: openai.OpenAI, database: str) -> None:
    old = client.responses.create(model="general", input="Long ago.")
    kept = client.responses.create(model="general", input="Just now.")
    engine = create_engine(database)
    with engine.begin() as conn:
        conn.execute(
            update(ResponseRow)
            .where(ResponseRow.id == old.id)
            .values(created_at=datetime.now(UTC) - timedelta(days=31))
        )
    engine.dispose()
    pruned = CliRunner().invoke(cli, ["db", "prune"], env={"DATABASE_URL": database})
    assert pruned.exit_code == 0 and "removed 1 stored responses" in pruned.output, pruned.output
    with pytest.raises(openai.NotFoundError) as gone:
        client.responses.retrieve(old.id)
    assert gone.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="general", input="And then?", previous_response_id=old.id)
    assert client.responses.retrieve(kept.id).output_text == kept.output_text


def test_a_response_not_stored_cannot_be_found(client: openai.OpenAI) -> None:
    response = client.responses.create(model="general", input="forget me", store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_a_streamed_response_is_stored_before_it_completes(client: openai.OpenAI, sent: list[dict[str, Any]]) -> None:
    events = list(client.responses.create(model="general", input="Remember 7.", stream=True))
    streamed = events[-1].response
    assert client.responses.retrieve(streamed.id).output_text == streamed.output_text == "[echo-general] Remember 7."
    client.responses.create(model="general", input="What was it?", previous_response_id=streamed.id)
    assert [m["role"] for m in sent[1]["messages"]] == ["user", "assistant", "user"]


def test_responses_are_their_tenants_only(
    router_artifact: Path, postgres_url: str, tmp_path: Path, upstream: str
) -> None:
    experts = [expert("general", "echo-general", f"{upstream}/v1", domains=["other"])]
    config = routed_config(experts, router_artifact)
    with running_gateway(config, postgres_url, tmp_path, moe_require_api_key=True) as gw:
        acme, acme_too = issue_key(postgres_url, tenant="acme"), issue_key(postgres_url, name="b", tenant="acme")
        globex = issue_key(postgres_url, tenant="globex")

        def sdk(key: Any) -> openai.OpenAI:
            return openai.OpenAI(base_url=gw.v1, api_key=key.key, max_retries=0)

        mine = sdk(acme).responses.create(model="moe-auto", input="a secret plan")
        # Another of the tenant's keys sees it and continues it.
        assert sdk(acme_too).responses.retrieve(mine.id).output_text == mine.output_text
        sdk(acme_too).responses.create(model="moe-auto", input="go on", previous_response_id=mine.id)
        # Another tenant's key: as if it did not exist.
        for attempt in (
            lambda c: c.responses.retrieve(mine.id),
            lambda c: c.responses.delete(mine.id),
            lambda c: c.responses.create(model="moe-auto", input="x", previous_response_id=mine.id),
        ):
            with pytest.raises(openai.NotFoundError) as info:
                attempt(sdk(globex))
            assert "secret" not in str(info.value.body)
        assert httpx.get(f"{gw.v1}/responses/{mine.id}").status_code == 401  # no key at all
        assert sdk(acme).responses.retrieve(mine.id).id == mine.id  # still there
