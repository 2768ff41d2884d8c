"""Decision records in real SQLite and PostgreSQL, migrations both ways, and a database outage losing nothing."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from alembic import command
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import make_url

from gateway.decisions.log import DecisionLog, make_engine
from gateway.decisions.record import DecisionRecord
from gateway.migrate import alembic_config, downgrade, upgrade
from migrations.schema import DeadLetterRow
from tests.gateway.support import (
    HISTORY_QUESTION,
    MATH_QUESTION,
    Gateway,
    decisions,
    routed_config,
    rows,
    running_gateway,
    wait_for,
)
from tests.gateway.tcp_proxy import tcp_proxy


def chat(v1: str, question: str, stream: bool = False) -> httpx.Response:
    body = {"model": "moe-auto", "stream": stream, "messages": [{"role": "user", "content": question}]}
    response = httpx.post(f"{v1}/chat/completions", json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response


def _readyz(gw: Gateway) -> dict[str, Any]:
    return httpx.get(f"{gw.base_url}/readyz", timeout=10).json()


def columns(url: str, table: str) -> list[dict[str, Any]]:
    engine = create_engine(url)
    try:
        return inspect(engine).get_columns(table)
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_up_and_down(database_url: str) -> None:
    upgrade(database_url)
    assert {"decisions", "expert_calls", "alembic_version"} <= tables(database_url)
    command.check(alembic_config(database_url))  # the models and the migrations describe the same schema
    downgrade(database_url, "0001")
    assert "policy" not in {c["name"] for c in columns(database_url, "decisions")}
    upgrade(database_url)
    assert "policy" in {c["name"] for c in columns(database_url, "decisions")}
    downgrade(database_url, "base")
    assert tables(database_url) <= {"alembic_version"}
    upgrade(database_url)
    assert {"decisions", "expert_calls"} <= tables(database_url)


def test_every_request_is_recorded(database_url: str, healthy_experts: list[dict[str, Any]], router_artifact: Path, tmp_path: Path) -> None:
    config = routed_config(healthy_experts, router_artifact)
    with running_gateway(config, database_url, tmp_path) as gw:
        ids = [chat(gw.v1, q, stream=i % 2 == 1).headers["x-moe-decision-id"]
               for i, q in enumerate([MATH_QUESTION, HISTORY_QUESTION] * 3)]
    # Shutdown flushed the buffer: no waiting needed.
    rows = {r.id: r for r in decisions(database_url)}
    assert set(rows) == set(ids)
    for i, decision_id in enumerate(ids):
        row = rows[decision_id]
        assert row.chosen_expert == ("stem" if i % 2 == 0 else "humanities")
        assert row.stream == (i % 2 == 1) and row.status == "ok"
        assert row.router == "embedding-domain" and row.router_version
        assert [c.status for c in row.calls] == ["ok"] and row.calls[0].expert == row.chosen_expert
        assert row.completion_tokens and row.cost_usd is not None and row.upstream_ms is not None
        assert len(row.request_hash) == 64


def test_prompts_are_stored_only_when_enabled(sqlite_url: str, healthy_experts: list[dict[str, Any]], router_artifact: Path, tmp_path: Path) -> None:
    with running_gateway(routed_config(healthy_experts, router_artifact), sqlite_url, tmp_path, moe_log_prompts=True) as gw:
        chat(gw.v1, MATH_QUESTION)
    assert MATH_QUESTION in (decisions(sqlite_url)[0].prompt or "")


def _via_proxy(url: str, port: int) -> str:
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


def test_postgres_outage_loses_nothing(postgres_url: str, healthy_experts: list[dict[str, Any]], router_artifact: Path, tmp_path: Path) -> None:
    config = routed_config(healthy_experts, router_artifact)
    real = make_url(postgres_url)
    with tcp_proxy(real.host or "127.0.0.1", real.port or 5432) as proxy:
        url = _via_proxy(postgres_url, proxy.port)
        with running_gateway(config, url, tmp_path) as gw:
            before = [chat(gw.v1, MATH_QUESTION).headers["x-moe-decision-id"] for _ in range(3)]
            wait_for(lambda: len(decisions(postgres_url)) == 3, what="records before the outage")

            proxy.down()
            during = [chat(gw.v1, HISTORY_QUESTION, stream=i % 2 == 0).headers["x-moe-decision-id"] for i in range(12)]
            # Reported, not required: the replica still serves, and says its log is waiting for the database.
            wait_for(lambda: _readyz(gw)["decision_log"]["database_reachable"] is False, what="/readyz to see the database down")
            ready = httpx.get(f"{gw.base_url}/readyz", timeout=10)
            assert ready.status_code == 200 and ready.json()["decision_log"]["pending"] == 12

            proxy.up()
            wait_for(lambda: len(decisions(postgres_url)) == 15, timeout_s=30, what="records after the outage")
            wait_for(lambda: _readyz(gw)["decision_log"]["database_reachable"] is True, what="/readyz to see the database back")
    assert sorted(r.id for r in decisions(postgres_url)) == sorted(before + during)


def test_overflow_spills_to_disk_and_replays_without_duplicates(postgres_url: str, healthy_experts: list[dict[str, Any]], router_artifact: Path, tmp_path: Path) -> None:
    config = routed_config(healthy_experts, router_artifact)
    real = make_url(postgres_url)
    spill = tmp_path / "spill"
    with tcp_proxy(real.host or "127.0.0.1", real.port or 5432) as proxy:
        url = _via_proxy(postgres_url, proxy.port)
        with running_gateway(config, url, tmp_path, moe_log_buffer=4) as gw:
            proxy.down()
            sent = [chat(gw.v1, MATH_QUESTION).headers["x-moe-decision-id"] for _ in range(10)]
            wait_for(lambda: any(spill.glob("*.jsonl")), what="a spill file")
        # Shut down while the database is still down: what was buffered spills too.
        assert decisions(postgres_url) == []
        spilled = sum(len(p.read_text().splitlines()) for p in spill.glob("*.jsonl"))
        assert spilled == 10

        proxy.up()
        with running_gateway(config, url, tmp_path) as gw:
            wait_for(lambda: not any(spill.glob("*.jsonl")), timeout_s=30, what="the replay")
            sent.append(chat(gw.v1, HISTORY_QUESTION).headers["x-moe-decision-id"])
    rows = decisions(postgres_url)
    assert sorted(r.id for r in rows) == sorted(sent)
    assert all(r.calls for r in rows)


def test_replaying_a_file_twice_duplicates_nothing(sqlite_url: str, healthy_experts: list[dict[str, Any]], router_artifact: Path, tmp_path: Path) -> None:
    """A crash between writing a replayed file and deleting it must not double-count on restart."""
    from gateway.decisions.record import DecisionRecord

    config = routed_config(healthy_experts, router_artifact)
    with running_gateway(config, sqlite_url, tmp_path) as gw:
        chat(gw.v1, MATH_QUESTION)
    row = decisions(sqlite_url)[0]
    spill = tmp_path / "spill"
    spill.mkdir(exist_ok=True)
    record = DecisionRecord(requested_model="moe-auto", request_hash=row.request_hash, stream=False, id=row.id,
                            created_at=row.created_at, status="ok")
    (spill / "leftover.jsonl").write_text(record.to_json() + "\n")
    with running_gateway(config, sqlite_url, tmp_path):
        wait_for(lambda: not (spill / "leftover.jsonl").exists(), what="the replay")
    assert [r.id for r in decisions(sqlite_url)] == [row.id]


def test_a_batch_holding_rows_already_written_writes_only_the_new_ones_on_postgresql(
    postgres_url: str, tmp_path: Path
) -> None:
    """PostgreSQL's batches go by COPY, which a row already there refuses whole: a replay takes the insert that
    skips such rows, and nothing is set aside."""
    from datetime import UTC, datetime

    from experts.pool import ExpertCall
    from migrations.schema import ExpertCallRow

    upgrade(postgres_url)
    log = DecisionLog(make_engine(postgres_url), tmp_path / "spill")

    def called() -> DecisionRecord:
        return _record(calls=[ExpertCall(attempt=0, expert="general", started_at=datetime.now(UTC), status="ok")])

    first = [called() for _ in range(3)]
    log._write(first)
    log._write([*first[1:], called(), called()])
    assert len(decisions(postgres_url)) == 5
    assert len(rows(postgres_url, ExpertCallRow, ExpertCallRow.decision_id)) == 5
    assert _dead_letters(postgres_url) == []


# -- records the database refuses ------------------------------------------------------------------

def _record(**fields: Any) -> DecisionRecord:
    return DecisionRecord(requested_model="moe-auto", request_hash="0" * 64, stream=False, status="ok", **fields)


def _dead_letters(url: str) -> list[DeadLetterRow]:
    return rows(url, DeadLetterRow, DeadLetterRow.failed_at)


# What PostgreSQL refuses that SQLite takes: a NUL in text, NaN in JSONB. Every string longer than its column
# would be refused too, but is cut to fit first.
POISON = {
    "nul": {"error": "upstream said \x00 and stopped"},
    "nan": {"ranked": [{"expert": "general", "score": float("nan")}]},
}


async def test_a_record_the_database_refuses_is_set_aside_and_the_rest_drain(postgres_url: str, tmp_path: Path) -> None:
    upgrade(postgres_url)
    log = DecisionLog(make_engine(postgres_url), tmp_path / "spill", flush_interval_s=0.05)
    good = [_record() for _ in range(40)]
    long = _record(policy="0" * 51, virtual_model="v" * 300, router_version="r" * 101)
    poison = {name: _record(**fields) for name, fields in POISON.items()}
    await log.start()
    for rec in [*good[:20], poison["nul"], long, *good[20:30], poison["nan"], *good[30:]]:
        log.record(rec)
    for _ in range(100):
        if not log.pending:
            break
        await asyncio.sleep(0.05)
    status = log.status()
    await log.stop()
    assert status.pending == 0 and status.dead_letters == 2 and status.draining
    written = {r.id: r for r in decisions(postgres_url)}
    assert set(written) == {r.id for r in [*good, long]}
    # Cut to its columns: recorded, not refused.
    assert (written[long.id].policy, written[long.id].virtual_model) == ("0" * 50, "v" * 200)
    assert written[long.id].router_version == "r" * 100
    letters = {letter.id: letter for letter in _dead_letters(postgres_url)}
    assert set(letters) == {poison["nul"].id, poison["nan"].id}
    assert "DataError" in letters[poison["nul"].id].error or "NUL" in letters[poison["nul"].id].error
    assert "\x00" not in letters[poison["nul"].id].error
    assert json.loads(letters[poison["nan"].id].record)["id"] == poison["nan"].id


async def test_a_spilled_file_holding_a_poison_record_replays_its_good_records(postgres_url: str, tmp_path: Path) -> None:
    upgrade(postgres_url)
    spill = tmp_path / "spill"
    spill.mkdir()
    good = [_record() for _ in range(93)]
    poison = _record(**POISON["nul"])
    lines = [r.to_json() for r in good[:50]] + [poison.to_json(), '{"cut short by a crash'] + [r.to_json() for r in good[50:]]
    (spill / "20260101T000000000000-1-deadbeef.jsonl").write_text("\n".join(lines) + "\n")
    log = DecisionLog(make_engine(postgres_url), spill, flush_interval_s=0.05)
    await log.start()
    for _ in range(100):
        if not log.spilled_files():
            break
        await asyncio.sleep(0.05)
    await log.stop()
    assert log.spilled_files() == []
    assert {r.id for r in decisions(postgres_url)} == {r.id for r in good}
    letters = _dead_letters(postgres_url)
    assert {letter.record for letter in letters} == {poison.to_json(), '{"cut short by a crash'}


def test_poison_requests_are_refused_and_the_log_keeps_draining(
    postgres_url: str, healthy_experts: list[dict[str, Any]], router_artifact: Path, tmp_path: Path
) -> None:
    """Once answered 200, these overflowed decisions.policy and decisions.requested_model, and PostgreSQL refused
    every batch after them, for good."""
    config = routed_config(healthy_experts, router_artifact)
    with running_gateway(config, postgres_url, tmp_path) as gw:
        for model in ("moe-auto:" + "0" * 51, "moe-auto:0.3" + " " * 300):
            body = {"model": model, "messages": [{"role": "user", "content": MATH_QUESTION}]}
            refused = httpx.post(f"{gw.v1}/chat/completions", json=body, timeout=10)
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "model", refused.text
        with ThreadPoolExecutor(8) as pool:
            sent = list(pool.map(lambda i: chat(gw.v1, f"{MATH_QUESTION} ({i})").headers["x-moe-decision-id"],
                                 range(100)))
        wait_for(lambda: {r.id for r in decisions(postgres_url)} == set(sent), timeout_s=5,
                 what="the 100 records in PostgreSQL")
