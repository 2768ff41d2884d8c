"""`moe router retrain` on a SQLite decision log: a parent that routes every question to the wrong expert logs
epsilon-greedy traffic with judge feedback; the retrained candidate must learn from it, beat the parent off-policy
and on the base data, record where it came from, and a rerun must change nothing."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from migrations.router_versions import RouterVersions
from migrations.schema import Base, DecisionRow, FeedbackRow
from routers import ExpertProfile, Manifest, load_router
from routers.exploration import choose
from tests.training.test_train import assert_monotone_frontier
from training.cli import app
from training.dataset import load_dataset
from training.evaluate import evaluate, kept_frontier, load_router_candidates
from training.retrain import PREDICTED_WEIGHT, RetrainError, RetrainRequest, retrain

EXPERTS = ("maths", "prose")
PRICES = {"maths": 0.2, "prose": 0.1}
# P(right) of each expert on each kind of question.
TRUTH = {"maths": {"maths": 0.9, "prose": 0.3}, "prose": {"maths": 0.2, "prose": 0.8}}
START = datetime(2025, 3, 1, tzinfo=UTC)
TOPICS = ["the sea", "autumn", "a lost key", "the city at night", "a garden", "winter trains"]


def question(kind: str, i: int) -> str:
    if kind == "maths":
        return f"Solve the equation {i % 9 + 2}x + {i % 7} = {i % 11 + 20} and compute the integral of x^{i % 4 + 1}"
    return f"Write a short poem about {TOPICS[i % len(TOPICS)]}, with rhymes and an image of {TOPICS[(i + 1) % 6]}"


def jsonl(path: Path, n: int, *, swapped: bool, seed: int) -> Path:
    """Fully scored rows (splits 60/20/20); `swapped` gives each expert the other's skill: a wrong parent."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        kind = EXPERTS[i % 2]
        truth = {e: TRUTH[EXPERTS[1 - EXPERTS.index(e)] if swapped else e][kind] for e in EXPERTS}
        rows.append({"query": question(kind, i), "scores": {e: float(rng.random() < p) for e, p in truth.items()},
                     "costs": {e: 300 * PRICES[e] / 1e6 for e in EXPERTS}, "domain": kind,
                     "split": ["train", "train", "train", "dev", "test"][i % 5]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def config(tmp_path: Path, artifact: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({
        "experts": [{"name": e, "model": e, "api_base": "http://127.0.0.1:9/v1", "price_per_mtok": PRICES[e]}
                    for e in EXPERTS],
        "routers": [{"name": "pool", "artifact": str(artifact)}],
        "virtual_models": [{"name": "moe-pool", "router": "pool"}],
    }))
    return path


def decision(ids: random.Random, created_at: datetime, text: str | None, chosen: str, ranked: list[str],
             propensity: float, virtual_model: str = "moe-pool") -> DecisionRow:
    # A seeded id keeps the row in the same split of the log (training/log_data.py splits by a hash of the id).
    rid = str(uuid.UUID(int=ids.getrandbits(128), version=4))
    return DecisionRow(
        id=rid, created_at=created_at, requested_model=virtual_model, virtual_model=virtual_model, router="r",
        router_version="parent", ranked=[{"expert": e, "score": 0.5} for e in ranked], recruited=[chosen],
        chosen_expert=chosen, propensity=propensity, explored=chosen != ranked[0],
        prompt=None if text is None else json.dumps([{"role": "user", "content": text}]), prompt_tokens=200,
        completion_tokens=100, status="ok", http_status=200, request_hash=rid, stream=False,
    )


def feedback(row: DecisionRow, score: float, source: str = "judge") -> FeedbackRow:
    return FeedbackRow(decision_id=row.id, source=source, score=score, created_at=row.created_at,
                       updated_at=row.created_at)


def write_log(engine: Engine, parent_dir: Path, n: int = 600, epsilon: float = 0.3, seed: int = 0) -> int:
    """`n` decisions the parent made (epsilon-greedy, uniform) with a judge's 0/1 score each, and rows the window
    must leave out or drop; returns how many decisions are usable. The candidate's off-policy value rests on the
    held-out rows where exploration agreed with it: about 18 of them at n = 300, so its SNIPS ranged 0.71-0.89 over
    ten draws of the log (0.69 in one CI run); at 600, 0.74-0.88 over ten."""
    parent = load_router(parent_dir, [ExpertProfile(e) for e in EXPERTS])
    rng, ids = random.Random(seed), random.Random(f"ids-{seed}")
    rows: list[DecisionRow | FeedbackRow] = []
    for i in range(n):
        kind = EXPERTS[i % 2]
        text = question(kind, 1000 + i)
        ranked = [r.name for r in parent.decide([{"role": "user", "content": text}]).ranked]
        choice = choose(ranked, [0.5] * len(ranked), epsilon, "uniform", rng)
        row = decision(ids, START + timedelta(seconds=i), text, choice.order[0], ranked, choice.propensity)
        rows += [row, feedback(row, float(rng.random() < TRUTH[choice.order[0]][kind]))]
        if i % 50 == 0:  # a user's thumbs beside the judge: left out when only the judge is asked for
            rows.append(feedback(row, 1.0, source="user"))
    no_prompt = decision(ids, START, None, "maths", list(EXPERTS), 0.7)
    unconfigured = decision(ids, START, question("maths", 1), "retired-expert", list(EXPERTS), 0.7)
    before_window = decision(ids, START - timedelta(days=2), question("maths", 2), "maths", list(EXPERTS), 0.7)
    other_model = decision(ids, START, question("maths", 3), "maths", list(EXPERTS), 0.7, virtual_model="other")
    no_feedback = decision(ids, START, question("maths", 4), "maths", list(EXPERTS), 0.7)
    rows += [no_prompt, unconfigured, before_window, other_model, no_feedback]
    rows += [feedback(r, 1.0) for r in (no_prompt, unconfigured, before_window, other_model)]
    with Session(engine) as session, session.begin():
        session.add_all(rows)
    return n


@pytest.fixture
def bandit(tmp_path: Path, router_cache: Path) -> dict[str, object]:
    """A SQLite log, the wrong parent registered active, a config and a base dataset (the encoder cache is the
    session's, tests/routers/families.py)."""
    from training.train import train_router

    parent_dir = tmp_path / "parent"
    train_router("skill-based", parent_dir, dataset=str(jsonl(tmp_path / "swapped.jsonl", 100, swapped=True, seed=1)))
    url = f"sqlite:///{tmp_path / 'log.db'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    parent_id = RouterVersions(engine).register("pool", parent_dir, status="active").id
    return {"url": url, "engine": engine, "parent_id": parent_id, "config": config(tmp_path, parent_dir),
            "usable": write_log(engine, parent_dir), "base": jsonl(tmp_path / "base.jsonl", 200, swapped=False, seed=2)}


def cli_retrain(bandit: dict[str, object], out: Path, *extra: str) -> tuple[int, str]:
    args = ["retrain", "--router", "pool", "--out", str(out), "--database-url", str(bandit["url"]),
            "--config", str(bandit["config"]), "--since", "2025-02-28", "--feedback-source", "judge",
            "--base-data", str(bandit["base"]), "--base-share", "0.2", *extra]
    result = CliRunner().invoke(app, args, terminal_width=200)
    return result.exit_code, result.output


def test_retrain_learns_from_bandit_feedback_and_a_rerun_changes_nothing(bandit: dict, tmp_path: Path) -> None:
    out = tmp_path / "candidate"
    code, output = cli_retrain(bandit, out)
    assert code == 0, output
    versions = RouterVersions(bandit["engine"])
    candidate = versions.list("pool")[-1]
    assert (candidate.status, candidate.parent_id, candidate.family) == ("candidate", bandit["parent_id"],
                                                                         "reward-distilled")
    assert f"version {candidate.id} ({candidate.version})" in output

    manifest = Manifest.read(out)
    retrained = manifest.params["retrain"]
    assert manifest.version == candidate.version == f"retrain-{manifest.data_hash}"
    assert retrained["records"] == bandit["usable"]
    assert (retrained["dropped_without_prompt"], retrained["dropped_unknown_expert"]) == (1, 1)
    assert retrained["parent_id"] == bandit["parent_id"] and retrained["feedback_sources"] == ["judge"]
    assert retrained["since"] == "2025-02-28T00:00:00+00:00" and retrained["base_rows"] > 0
    metrics = candidate.metrics
    assert metrics["n_records"] == bandit["usable"]
    # The parent sends each question to the expert that is bad at it: the log's explored answers show otherwise.
    assert metrics["parent_offpolicy_snips"] < 0.4 < 0.7 < metrics["offpolicy_snips"]
    assert metrics["offpolicy_gain_dr"] > 0.3 and metrics["offpolicy_gain_snips"] > 0.3
    assert metrics["offpolicy_gain_dr"] > 3 * metrics["offpolicy_gain_dr_stderr"] > 0
    assert metrics["base_test_accuracy_change"] > 0.3
    assert 0.3 < metrics["expert_share_max"] < 0.7 and metrics["routing_p95_ms"] > 0
    # The candidate's own frontier on the base data's test split, kept for the dashboard's cost-quality plot.
    assert manifest.params["cost_quality_split"] == "test"
    assert_monotone_frontier(manifest.params["cost_quality"])
    base = load_dataset(str(bandit["base"]))
    replayed = evaluate(load_router_candidates([out], base)[0], base.of_split("test"), latency_queries=0)
    curve = manifest.params["cost_quality"]
    assert curve == kept_frontier(replayed["candidates"][0]["frontier"], "test")["cost_quality"]
    assert max(p["accuracy"] for p in curve) == pytest.approx(metrics["base_test_accuracy"], abs=1e-4)

    router = load_router(out, [ExpertProfile(e, price_per_mtok=PRICES[e]) for e in EXPERTS])
    for kind in EXPERTS:
        assert router.decide([{"role": "user", "content": question(kind, 5000)}]).chosen == kind

    code, output = cli_retrain(bandit, out)
    assert code == 0, output
    assert "already retrained from the same data" in output and f"version {candidate.id} " in output
    assert [v.id for v in versions.list("pool")] == [bandit["parent_id"], candidate.id]
    # The parent's predictions filled the rewards the log does not know: without them, other data, another version.
    assert retrained["predicted_weight"] == PREDICTED_WEIGHT > 0
    code, output = cli_retrain(bandit, tmp_path / "observed-only", "--predicted-weight", "0", "--no-register")
    assert code == 0, output
    observed_only = Manifest.read(tmp_path / "observed-only")
    assert observed_only.params["retrain"]["predicted_weight"] == 0 and observed_only.version != manifest.version

    # Without base data only the log's chosen answers are known: no cost-quality curve to keep.
    unbased = retrain(RetrainRequest(router="pool", out=tmp_path / "unbased", database_url=bandit["url"],
                                     config=bandit["config"], since=START - timedelta(days=1), sources=("judge",),
                                     register=False))
    assert not {"cost_quality", "cost_quality_split"} & set(unbased.manifest.params)
    assert "base_test_auc" not in unbased.manifest.metrics


def test_a_crash_leaves_no_partial_version(bandit: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from routers.reward_distilled import RewardDistilledRouter

    def crash(self: RewardDistilledRouter, directory: Path) -> None:
        (directory / "half-written").write_text("")
        raise OSError("disk full")

    monkeypatch.setattr(RewardDistilledRouter, "_save", crash)
    out = tmp_path / "nested" / "candidate"
    request = RetrainRequest(router="pool", out=out, database_url=bandit["url"], config=bandit["config"])
    with pytest.raises(OSError, match="disk full"):
        retrain(request)
    assert not out.exists() and list(out.parent.iterdir()) == []
    assert [v.id for v in RouterVersions(bandit["engine"]).list("pool")] == [bandit["parent_id"]]


def test_what_cannot_be_retrained_is_said_plainly(bandit: dict, tmp_path: Path) -> None:
    code, output = cli_retrain(bandit, tmp_path / "a", "--family", "embedding-domain")
    assert code == 1 and "embedding-domain cannot learn from bandit feedback" in output
    code, output = cli_retrain(bandit, tmp_path / "b", "--since", "2030-01-01")
    assert code == 1 and "0 usable records" in output
    code, output = cli_retrain(bandit, tmp_path / "c", "--until", "yesterday")
    assert code == 2 and "ISO date" in output
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    code, output = cli_retrain(bandit, tmp_path / "d")
    assert code == 1 and "not empty" in output
    code, output = cli_retrain(bandit, tmp_path / "f", "--predicted-weight", "-0.1")
    assert code == 2 and "--predicted-weight" in output
    with pytest.raises(RetrainError, match="at least 0"):
        retrain(RetrainRequest(router="pool", out=tmp_path / "g", database_url=bandit["url"], config=bandit["config"],
                               predicted_weight=-1.0))
    with pytest.raises(RetrainError, match="no router 'nope'"):
        retrain(RetrainRequest(router="nope", out=tmp_path / "e", database_url=bandit["url"], config=bandit["config"]))
    assert [v.id for v in RouterVersions(bandit["engine"]).list("pool")] == [bandit["parent_id"]]
