"""The Batch API (`/v1/files`, `/v1/batches`) through the official openai SDK, against a gateway on the scripted
upstream, its files and batches in SQLite and in PostgreSQL: routed expert by expert in the gateway process, one
decision record per request, per tenant, cancellable, resumed by the next gateway after a stop."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import Batch, FileObject

from gateway.config import GatewayConfig
from migrations.schema import BatchRow
from tests.gateway.support import (
    HISTORY_QUESTION,
    MATH_QUESTION,
    Gateway,
    decisions,
    expert,
    issue_key,
    routed_config,
    rows,
    running_gateway,
    wait_for,
)
from tests.gateway.test_batch import envelope, recording_upstream

DONE = ("completed", "failed", "cancelled")


def jsonl(lines: list[Any]) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def upload(client: openai.OpenAI, lines: list[Any]) -> FileObject:
    return client.files.create(file=("requests.jsonl", jsonl(lines)), purpose="batch")


def submit(client: openai.OpenAI, lines: list[Any], **extra: Any) -> Batch:
    source = upload(client, lines)
    return client.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h", **extra
    )


def finished(client: openai.OpenAI, batch_id: str, timeout_s: float = 60) -> Batch:
    wait_for(lambda: client.batches.retrieve(batch_id).status in DONE, timeout_s=timeout_s, what=f"{batch_id} done")
    return client.batches.retrieve(batch_id)


def content(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    """A batch output or error file's lines by custom_id."""
    assert file_id is not None
    lines = [json.loads(line) for line in client.files.content(file_id).text.splitlines()]
    return {line["custom_id"]: line for line in lines}


def config_on(v1: str) -> GatewayConfig:
    return GatewayConfig.model_validate({"experts": [expert("alpha", "echo-alpha", v1)]})


@pytest.fixture
def gateway(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, database_url: str, tmp_path: Path
) -> Iterator[Gateway]:
    config = routed_config(healthy_experts, router_artifact)
    with running_gateway(config, database_url, tmp_path, moe_files_dir=tmp_path / "files") as gw:
        yield gw


@pytest.fixture
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0)


def test_a_batch_is_routed_answered_by_custom_id_and_recorded(
    client: openai.OpenAI, database_url: str, tmp_path: Path
) -> None:
    lines: list[Any] = []
    for i in range(3):
        lines.append(envelope(f"math-{i}", "moe-auto", f"{MATH_QUESTION} (#{i})"))
        lines.append(envelope(f"history-{i}", "moe-auto", f"{HISTORY_QUESTION} (#{i})"))
    lines.append(envelope("direct", "general", "Say hello"))
    lines.append(
        {
            **envelope("too-hot", "moe-auto", MATH_QUESTION),
            "body": {"model": "moe-auto", "messages": [{"role": "user", "content": "x"}], "temperature": 9},
        }
    )
    lines.append({**envelope("embeddings", "moe-auto", "x"), "url": "/v1/embeddings"})

    source = upload(client, lines)
    assert (source.purpose, source.bytes, source.filename, source.object) == (
        "batch",
        len(jsonl(lines)),
        "requests.jsonl",
        "file",
    )
    assert client.files.retrieve(source.id).id == source.id
    assert client.files.content(source.id).content == jsonl(lines)
    created = client.batches.create(
        input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "nightly"}
    )
    assert created.status == "validating" and created.metadata == {"job": "nightly"}
    assert created.expires_at == created.created_at + 24 * 3600

    batch = finished(client, created.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (9, 7, 2)
    assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at

    answers = content(client, batch.output_file_id)
    assert set(answers) == {f"{kind}-{i}" for kind in ("math", "history") for i in range(3)} | {"direct"}
    for i in range(3):
        math = answers[f"math-{i}"]["response"]["body"]
        assert math["model"] == "stem"
        assert math["choices"][0]["message"]["content"] == f"[echo-stem|STEM] {MATH_QUESTION} (#{i})"
        history = answers[f"history-{i}"]["response"]["body"]
        assert history["model"] == "humanities"
        assert history["choices"][0]["message"]["content"] == f"[echo-humanities] {HISTORY_QUESTION} (#{i})"
    assert answers["direct"]["response"]["body"]["model"] == "general"
    assert all(a["response"]["status_code"] == 200 and a["error"] is None for a in answers.values())

    errors = content(client, batch.error_file_id)
    assert set(errors) == {"too-hot", "embeddings"}
    assert errors["too-hot"]["response"]["status_code"] == 400
    assert errors["too-hot"]["response"]["body"]["error"]["param"] == "temperature"
    assert errors["embeddings"]["response"] is None and errors["embeddings"]["error"]["code"] == "unsupported_url"

    output = client.files.retrieve(batch.output_file_id)  # type: ignore[arg-type]
    assert output.purpose == "batch_output" and output.bytes == len(client.files.content(output.id).content)
    listed = [f.id for f in client.files.list(limit=2)]  # pages of two, newest first
    assert set(listed) == {source.id, batch.output_file_id, batch.error_file_id} and listed[-1] == source.id
    assert [f.id for f in client.files.list(purpose="batch")] == [source.id]
    assert [b.id for b in client.batches.list()] == [batch.id]

    # One decision record per request that reached an expert, its id in the output line, routed as a chat request.
    wait_for(lambda: len(decisions(database_url)) == 7, what="7 decision records")
    records = {r.id: r for r in decisions(database_url)}
    assert set(records) == {a["response"]["request_id"] for a in answers.values()}
    for answer in answers.values():
        record = records[answer["response"]["request_id"]]
        assert record.chosen_expert == answer["response"]["body"]["model"] and record.status == "ok"
        assert (record.router == "embedding-domain") == (record.requested_model == "moe-auto")
        assert [(c.expert, c.status) for c in record.calls] == [(record.chosen_expert, "ok")]

    deleted = client.files.delete(source.id)
    assert deleted.deleted and deleted.id == source.id
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(source.id)
    assert not (tmp_path / "files" / source.id).exists()


def test_files_and_batches_belong_to_their_tenant(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, database_url: str, tmp_path: Path
) -> None:
    config = routed_config(healthy_experts, router_artifact)
    with running_gateway(
        config, database_url, tmp_path, moe_files_dir=tmp_path / "files", moe_require_api_key=True
    ) as gw:
        owner, colleague = issue_key(database_url, tenant="acme"), issue_key(database_url, name="b", tenant="acme")
        stranger = issue_key(database_url, name="c", tenant="globex")
        mine, theirs, ours = (
            openai.OpenAI(base_url=gw.v1, api_key=k.key, max_retries=0) for k in (owner, stranger, colleague)
        )
        batch = finished(mine, submit(mine, [envelope("q", "moe-auto", MATH_QUESTION)]).id)
        assert batch.status == "completed" and batch.output_file_id

        for call in (
            lambda: theirs.files.retrieve(batch.input_file_id),
            lambda: theirs.files.content(batch.output_file_id),  # type: ignore[arg-type]
            lambda: theirs.files.delete(batch.input_file_id),
            lambda: theirs.batches.retrieve(batch.id),
            lambda: theirs.batches.cancel(batch.id),
            lambda: theirs.batches.create(
                input_file_id=batch.input_file_id, endpoint="/v1/chat/completions", completion_window="24h"
            ),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        assert list(theirs.files.list()) == [] and list(theirs.batches.list()) == []
        assert ours.batches.retrieve(batch.id).id == batch.id  # a colleague of the same tenant sees it
        assert content(ours, batch.output_file_id)["q"]["response"]["body"]["model"] == "stem"
        assert httpx.get(f"{gw.v1}/batches/{batch.id}").status_code == 401

    (record,) = decisions(database_url)
    assert (record.api_key_id, record.tenant) == (owner.id, "acme")


def test_bad_uploads_and_batches_get_openai_shaped_4xx(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    config = routed_config(healthy_experts, router_artifact)
    with running_gateway(config, sqlite_url, tmp_path, moe_files_dir=tmp_path / "files", moe_max_file_bytes=2000) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)

        def refused(data: bytes, purpose: str = "batch") -> httpx.Response:
            response = httpx.post(f"{gw.v1}/files", files={"file": ("in.jsonl", data)}, data={"purpose": purpose})
            assert set(response.json()) == {"error"}, response.text
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            return response

        good = jsonl([envelope("q", "moe-auto", "x")])
        cases = {
            "not JSON": (refused(b'{"custom_id": "q"}\nnot json\n'), 400, "invalid_jsonl", "line 2"),
            "not an object": (refused(b"[1, 2]\n"), 400, "invalid_jsonl", "line 1"),
            "empty": (refused(b"\n\n"), 400, "empty_file", "no requests"),
            "too big": (
                refused(jsonl([envelope(f"q{i}", "moe-auto", "x" * 100) for i in range(20)])),
                413,
                "file_too_large",
                "2000 bytes",
            ),
            "wrong purpose": (refused(good, purpose="fine-tune"), 400, "unsupported_purpose", "fine-tune"),
        }
        for name, (response, status, code, words) in cases.items():
            assert response.status_code == status, name
            assert response.json()["error"]["code"] == code and words in response.json()["error"]["message"], name
        assert httpx.post(f"{gw.v1}/files", data={"purpose": "batch"}).status_code == 400  # no file at all
        with pytest.raises(openai.BadRequestError):
            client.files.create(file=("in.jsonl", b"nope\n"), purpose="batch")
        assert list(client.files.list()) == [] and not list((tmp_path / "files").glob("*"))

        source = upload(client, [envelope("q", "moe-auto", "x")])

        def create(**body: Any) -> httpx.Response:
            payload = {
                "input_file_id": source.id,
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
                **body,
            }
            return httpx.post(f"{gw.v1}/batches", json=payload)

        assert create(endpoint="/v1/embeddings").json()["error"]["param"] == "endpoint"
        assert create(completion_window="48h").status_code == 400
        assert create(metadata={"k": "v\u0000"}).status_code == 400
        missing = create(input_file_id="file-nothere")
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "input_file_id"
        output = finished(client, create().json()["id"]).output_file_id
        assert create(input_file_id=output).json()["error"]["code"] == "invalid_input_file"
        assert httpx.get(f"{gw.v1}/batches/batch_nothere").status_code == 404
        assert httpx.get(f"{gw.v1}/files/..%2F..%2Fetc%2Fpasswd/content").status_code == 404
        cancel = httpx.post(f"{gw.v1}/batches/{client.batches.list().data[0].id}/cancel")
        assert cancel.status_code == 400 and cancel.json()["error"]["code"] == "batch_not_cancellable"

        # Its input's bytes gone from the file store before it runs: the batch fails, saying why.
        (tmp_path / "files" / source.id).unlink()
        failed = finished(client, create().json()["id"])
        assert failed.status == "failed" and failed.failed_at and failed.output_file_id is None
        assert failed.errors and failed.errors.data and failed.errors.data[0].code == "input_file_not_found"


def test_cancel_stops_sending_and_ends_with_the_partial_output(database_url: str, tmp_path: Path) -> None:
    # Two answers, then eight calls held in flight (the expert's concurrency); ten more wait their turn.
    with (
        recording_upstream(answer_first=2) as (recorder, v1),
        running_gateway(config_on(v1), database_url, tmp_path, moe_files_dir=tmp_path / "files") as gw,
    ):
        client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        created = submit(client, [envelope(f"r{i}", "alpha", f"question {i}") for i in range(20)])
        wait_for(lambda: recorder.holding == 8, what="eight calls in flight")
        assert client.batches.cancel(created.id).status == "cancelling"

        def seen_by_runner() -> bool:  # a heartbeat well after the cancel: the runner has read it and stopped
            (row,) = rows(database_url, BatchRow, BatchRow.id)
            return row.cancelling_at is not None and (row.heartbeat_at - row.cancelling_at).total_seconds() > 0.2

        wait_for(seen_by_runner, what="the runner to see the cancel")
        recorder.release()
        batch = finished(client, created.id)
        answers, errors = content(client, batch.output_file_id), content(client, batch.error_file_id)

    assert batch.status == "cancelled" and batch.cancelling_at and batch.cancelled_at
    assert len(recorder.arrivals) == 10  # nothing was sent after the cancel
    assert sorted(answers) == sorted(f"r{i}" for i in range(20) if f"question {i}" in recorder.answered)
    assert len(answers) == 10 and len(errors) == 10
    assert {e["error"]["code"] for e in errors.values()} == {"batch_cancelled"}
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (20, 10, 0)
    assert len(decisions(database_url)) == 10  # sent requests only


def test_a_stopped_gateways_batches_resume_at_the_next_start(database_url: str, tmp_path: Path) -> None:
    prompts = [f"question {i}" for i in range(12)]
    settings: dict[str, Any] = {"moe_files_dir": tmp_path / "files"}
    with recording_upstream(answer_first=3) as (recorder, v1):
        with running_gateway(config_on(v1), database_url, tmp_path, **settings) as gw:
            client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
            batch_id = submit(client, [envelope(f"r{i}", "alpha", p) for i, p in enumerate(prompts)]).id
            wait_for(lambda: recorder.holding == 8, what="three answers and eight calls in flight")
            wait_for(
                lambda: client.batches.retrieve(batch_id).request_counts.completed == 3,  # type: ignore[union-attr]
                what="three answers counted",
            )
        wait_for(lambda: len(recorder.abandoned) == 8, what="the stop to cut the calls in flight")
        (row,) = rows(database_url, BatchRow, BatchRow.id)
        assert (row.status, row.runner) == ("in_progress", None)  # let go of, for the next gateway to take
        recorder.release()
        with running_gateway(config_on(v1), database_url, tmp_path, **settings) as gw:
            client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
            batch = finished(client, batch_id)
            answers = content(client, batch.output_file_id)

    assert batch.status == "completed" and batch.error_file_id is None
    assert recorder.answered == Counter(prompts)  # each answered once: nothing answered before was sent again
    assert [answers[f"r{i}"]["response"]["body"]["choices"][0]["message"]["content"] for i in range(12)] == [
        f"[echo-alpha] {p}" for p in prompts
    ]
    wait_for(lambda: len(decisions(database_url)) == 12, what="12 decision records")
    assert {r.id for r in decisions(database_url)} == {a["response"]["request_id"] for a in answers.values()}
