"""ensemble: trained for real on small made-up data (with and without domain labels), saved, reloaded, asked to
route; its choice of mix is checked on made-up predictions and on a real fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from routers import ExpertProfile, encoder, load_router
from routers import ensemble as ensemble_module
from routers.cost import COST_FILE, CostModel
from routers.dataset import RoutingDataset
from routers.discovery import dev_error
from routers.ensemble import MEMBERS, MEMBERS_DIR, EnsembleRouter, mix_weights, simplex
from routers.quality import profiles_of
from tests.routers.test_routers_trained import made_up_rows
from training.dataset import load_dataset
from training.train import train_router

EXPERTS = [ExpertProfile("alpha"), ExpertProfile("beta")]
MATHS, HISTORY = (
    "What is the integral of x^3 from 0 to 5?",
    "What caused the fall of the Ming dynasty in ancient China?",
)


def write_rows(path: Path, *, domains: bool) -> Path:
    rows = made_up_rows()
    if not domains:
        for row in rows:
            del row["domain"]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def _trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {}


@pytest.fixture
def trained(router_cache: Path, _trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`ensemble` trained through `train_router` on the made-up JSONL with and without domains, once a module."""
    if not _trained:
        root = tmp_path_factory.mktemp("ensemble")
        for name, domains in (("labelled", True), ("unlabelled", False)):
            data = write_rows(root / f"{name}.jsonl", domains=domains)
            _trained[name] = train_router("ensemble", root / name, dataset=data).directory
    return _trained


@pytest.mark.parametrize("name", ["labelled", "unlabelled"])
def test_trains_on_a_jsonl_and_routes(name: str, trained: dict[str, Path]) -> None:
    directory = trained[name]
    manifest = json.loads((directory / "router.json").read_text())
    assert manifest["family"] == "ensemble" and manifest["experts"] == ["alpha", "beta"]
    params = manifest["params"]
    assert params["candidates"] == list(MEMBERS) and set(params["members"]) <= set(MEMBERS)
    assert sum(params["weights"]) == pytest.approx(1.0)
    for family in params["members"]:  # each member a whole artifact of its own family
        assert json.loads((directory / MEMBERS_DIR / family / "router.json").read_text())["family"] == family
    router = load_router(directory, list(reversed(EXPERTS)))  # any order: columns follow the manifest
    assert router.decide([{"role": "user", "content": MATHS}]).chosen == "alpha"
    assert router.decide([{"role": "user", "content": HISTORY}]).chosen == "beta"
    test = load_dataset(directory.parent / f"{name}.jsonl").of_split("test")
    picks = router.score(test.queries.tolist()).argmax(axis=1)
    assert test.scores[np.arange(len(test)), picks].mean() > 0.8


def test_save_and_load_give_the_same_scores(
    router_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever dev would choose, a mix of both members: the round trip must carry each, and its weight.
    monkeypatch.setattr(ensemble_module, "mix_weights", lambda predictions, dev: np.array([0.25, 0.75]))
    data = load_dataset(write_rows(tmp_path / "rows.jsonl", domains=True))
    train, dev, test = (data.of_split(split) for split in ("train", "dev", "test"))
    router = EnsembleRouter(profiles_of(train)).fit(train, dev)
    assert [member.family for member in router.members] == list(MEMBERS)
    router.save(tmp_path / "router")
    loaded = load_router(tmp_path / "router", EXPERTS)
    texts = [*test.queries.tolist(), MATHS, "", "word " * 2000]
    np.testing.assert_allclose(loaded.score(texts), router.score(texts), rtol=1e-6)
    each = [member.score(texts) for member in router.members]
    np.testing.assert_allclose(router.score(texts), 0.25 * each[0] + 0.75 * each[1], rtol=1e-6)
    # One cost model prices the decisions, the ensemble's: members carry none.
    assert [p.parent.name for p in (tmp_path / "router").rglob(COST_FILE)] == ["router"]
    np.testing.assert_allclose(loaded.query_cost(texts), router.query_cost(texts), rtol=1e-6)


def test_members_share_one_embedding_per_request(
    router_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both members read the static encoder: the ensemble embeds a request once and scores as its members do."""
    monkeypatch.setattr(ensemble_module, "mix_weights", lambda predictions, dev: np.array([0.5, 0.5]))
    data = load_dataset(write_rows(tmp_path / "rows.jsonl", domains=True))
    train, dev = data.of_split("train"), data.of_split("dev")
    router = EnsembleRouter(profiles_of(train)).fit(train, dev, features="static+lexical")
    expected = 0.5 * router.members[0].score([MATHS]) + 0.5 * router.members[1].score([MATHS])
    calls: list[int] = []
    embed_static = encoder.embed_static

    def counted(texts: list[str], identity: str | None = None) -> np.ndarray:
        calls.append(len(texts))
        return embed_static(texts, identity)

    monkeypatch.setattr(encoder, "embed_static", counted)
    np.testing.assert_allclose(router.score([MATHS]), expected, rtol=1e-6)
    assert calls == [1]


def test_members_are_stacked_on_predictions_that_did_not_see_dev(router_cache: Path, tmp_path: Path) -> None:
    """skill-based's final profiles count dev's rewards; what the ensemble stacks on must not."""
    data = load_dataset(write_rows(tmp_path / "rows.jsonl", domains=True))
    train, dev = data.of_split("train"), data.of_split("dev")
    router = EnsembleRouter(profiles_of(train)).fit(train, dev, members=("skill-based",))
    member = router.members[0]
    assert member.dev_quality is not None
    assert not np.allclose(member.dev_quality, member.score(dev.queries.tolist()))  # the refit moved them
    assert router.manifest is not None and router.manifest.params["weights"] == [1.0]


def test_one_cost_model_is_fitted_for_the_ensemble_and_its_members(
    router_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fits: list[int] = []
    fit = CostModel.fit.__func__  # type: ignore[attr-defined]

    def counted(cls: type[CostModel], texts: list[str], costs: np.ndarray) -> CostModel | None:
        fits.append(len(texts))
        return fit(cls, texts, costs)

    monkeypatch.setattr(CostModel, "fit", classmethod(counted))
    data = load_dataset(write_rows(tmp_path / "rows.jsonl", domains=True))
    train, dev = data.of_split("train"), data.of_split("dev")
    router = EnsembleRouter(profiles_of(train)).fit(train, dev)
    assert fits == [len(train)]  # reward-distilled's search, each member's manifest and the ensemble's: one fit
    assert router.cost_model is not None and all(member.cost_model is None for member in router.members)


def made_up_dev(truth: np.ndarray) -> RoutingDataset:
    n, m = truth.shape
    return RoutingDataset(
        queries=np.array([f"q{i}" for i in range(n)], dtype=object),
        experts=tuple(f"e{j}" for j in range(m)),
        scores=truth,
        costs=np.ones((n, m)),
        domains=np.full(n, "", dtype=object),
        tags=tuple(() for _ in range(n)),
        split=np.full(n, "dev", dtype=object),
    )


def test_the_mix_of_two_members_wrong_in_opposite_ways_wins() -> None:
    truth = np.random.default_rng(0).random((40, 3))
    error = np.random.default_rng(1).normal(0, 0.2, truth.shape)
    np.testing.assert_allclose(mix_weights([truth + error, truth - error], made_up_dev(truth)), [0.5, 0.5])


def test_a_member_better_alone_than_in_any_mix_is_kept_alone() -> None:
    truth = np.random.default_rng(0).random((40, 3))
    noise = np.random.default_rng(1).normal(0, 1, truth.shape)
    dev = made_up_dev(truth)
    members = [truth + 0.3 * noise, truth + 0.1 * noise]  # the second is closer; both err the same way
    np.testing.assert_array_equal(mix_weights(members, dev), [0.0, 1.0])
    assert dev_error(members[1], dev) < dev_error(0.25 * members[0] + 0.75 * members[1], dev)


@pytest.mark.parametrize("name", ["labelled", "unlabelled"])
def test_the_fitted_ensemble_is_the_mix_with_the_least_dev_error(name: str, trained: dict[str, Path]) -> None:
    manifest = json.loads((trained[name] / "router.json").read_text())
    metrics, params = manifest["metrics"], manifest["params"]
    members = {f"dev_error_{family}": metrics[f"dev_error_{family}"] for family in MEMBERS}
    assert metrics["dev_error"] <= min(members.values()) + 1e-12  # each member alone is on the grid
    if len(params["members"]) == 1:
        assert params["weights"] == [1.0] and metrics["dev_error"] == pytest.approx(
            metrics[f"dev_error_{params['members'][0]}"]
        )


def test_simplex_weights_sum_to_one_and_include_every_member_alone() -> None:
    grid = simplex(3)
    np.testing.assert_allclose(grid.sum(axis=1), 1.0)
    assert {tuple(row) for row in np.eye(3)} <= {tuple(row) for row in grid}
    assert len(grid) == 15  # multiples of 1/4 over three members
