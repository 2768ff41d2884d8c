"""`moe router retrain` against a real PostgreSQL decision log (schema by the migrations): the window query, the
candidate's registration beside its parent, and an idempotent rerun."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import create_engine

from gateway.migrate import upgrade
from migrations.decision_window import count_window, read_window
from migrations.router_versions import RouterVersions
from routers import Manifest
from tests.training.test_retrain import START, config, jsonl, write_log
from training.retrain import RetrainRequest, retrain
from training.train import train_router


def test_retrain_on_postgresql(postgres_url: str, tmp_path: Path, router_cache: Path) -> None:
    upgrade(postgres_url)
    engine = create_engine(postgres_url)
    parent_dir = tmp_path / "parent"
    train_router("skill-based", parent_dir, dataset=str(jsonl(tmp_path / "swapped.jsonl", 100, swapped=True, seed=1)))
    versions = RouterVersions(engine)
    parent_id = versions.register("pool", parent_dir, status="active").id
    usable = write_log(engine, parent_dir, n=200)

    window = {"since": START - timedelta(hours=1), "virtual_models": ["moe-pool"], "sources": ["judge"]}
    rows = list(read_window(engine, **window))
    # The usable ones, plus the one without a prompt and the one for an unconfigured expert (dropped later).
    assert count_window(engine, **window) == len(rows) == usable + 2
    assert [r.created_at for r in rows] == sorted(r.created_at for r in rows)
    assert all(r.feedback == 1 and sorted(r.ranked) == ["maths", "prose"] for r in rows)  # the judge's only

    request = RetrainRequest(router="pool", out=tmp_path / "candidate", database_url=postgres_url,
                             config=config(tmp_path, parent_dir), since=window["since"], sources=("judge",),
                             base_data=str(jsonl(tmp_path / "base.jsonl", 200, swapped=False, seed=2)))
    first = retrain(request)
    assert not first.existing and first.version_id is not None
    info = versions.list("pool")[-1]
    assert (info.id, info.status, info.parent_id) == (first.version_id, "candidate", parent_id)
    assert info.metrics["n_records"] == usable and info.metrics["offpolicy_gain_dr"] > 0.2
    assert Manifest.read(request.out).params["retrain"]["records"] == usable

    again = retrain(request)
    assert again.existing and again.version_id == first.version_id
    assert [v.id for v in versions.list("pool")] == [parent_id, first.version_id]
