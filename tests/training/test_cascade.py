"""training/cascade.py: the offline replay of voters-then-the-router's-pick, its dev search and its report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from routers.dataset import RoutingDataset
from training import cascade
from training.cascade import Replay, answer_codes, outcomes, vote

EXPERTS = ("cheap", "mid", "dear")
ZEROEVAL = Path("../shared/data/zeroeval_pool/routing.jsonl")


def dataset(answers: list[list[str | None]], scores: list[list[float]], costs: list[float], split: str = "test"):
    n = len(answers)
    return RoutingDataset(
        queries=np.array([f"q{i}" for i in range(n)], dtype=object),
        experts=EXPERTS[: len(costs)],
        scores=np.array(scores, dtype=float),
        costs=np.tile(np.array(costs) / 1000, (n, 1)),  # USD per query: the per-1k figures are `costs`
        tags=((),) * n,
        domains=np.array([""] * n, dtype=object),
        split=np.array([split] * n),
        answers=np.array(answers, dtype=object),
    )


def replay_of(data: RoutingDataset) -> Replay:
    return Replay.of(data, data.scores, data.costs.mean(axis=0))


ROWS = dataset(
    answers=[
        ["$1,200", "1200", "1200"],  # cheap and mid agree
        ["3", "4", "5"],  # they disagree
        [None, "7", "7"],  # cheap gave no answer: mid alone cannot agree
        ["B", "B", "C"],  # agree, and the answer returned is mid's, scored 0 where cheap's is scored 1
    ],
    scores=[[1, 1, 1], [0, 0, 1], [0, 1, 1], [1, 0, 0]],
    costs=[1.0, 2.0, 10.0],
)


def test_answer_codes_compare_normalised_answers_and_letters() -> None:
    codes = answer_codes(ROWS.answers)
    assert codes[0, 0] == codes[0, 1] == codes[0, 2] >= 0  # "$1,200" and "1200"
    assert codes[3, 0] == codes[3, 1] != codes[3, 2]  # letters agree as letters
    assert codes[2, 0] == -1 and len(set(codes[1])) == 3


def test_agreement_is_accepted_and_disagreement_escalates_to_the_routers_pick() -> None:
    replay = replay_of(ROWS)
    voting = vote(replay, [0, 1], need=2)
    assert voting.agreed.tolist() == [True, False, False, True]
    assert voting.answer_of[[0, 3]].tolist() == [1, 1]  # the last voter naming the agreed answer
    dear = np.full((1, 4), 2)
    cost, accuracy = outcomes(replay, voting, dear)
    assert cost[0] == pytest.approx((3 + 13 + 13 + 3) / 4)  # every expert called, at its recorded cost
    assert accuracy[0] == pytest.approx(3 / 4)  # the last row returns mid's answer, scored 0
    mid = np.full((1, 4), 1)  # the pick already asked as a voter: its answer in hand, no second call
    cost, accuracy = outcomes(replay, voting, mid)
    assert cost[0] == pytest.approx(3.0) and accuracy[0] == pytest.approx(2 / 4)


def test_the_router_alone_calls_only_its_pick() -> None:
    replay = replay_of(ROWS)
    voting = vote(replay, [], need=2)
    assert not voting.agreed.any() and not voting.called.any()
    cost, accuracy = outcomes(replay, voting, np.array([[2, 2, 2, 2], [0, 0, 0, 0]]))
    assert cost.tolist() == pytest.approx([10.0, 1.0]) and accuracy.tolist() == pytest.approx([0.75, 0.5])


def test_voters_are_asked_in_steps_and_not_past_reach() -> None:
    data = dataset([["1", "2", "1"], ["1", "2", "3"]], [[1, 0, 1], [0, 0, 0]], [1.0, 1.0, 1.0])
    voting = vote(replay_of(data), [0, 1, 2], need=2)
    assert voting.called.all()  # the third voter settles the first row, and is asked in vain on the second
    assert voting.agreed.tolist() == [True, False] and voting.answer_of[0] == 2
    wide = dataset([["1", "2", "3"]], [[1, 1, 1]], [1.0, 1.0, 1.0])
    assert vote(replay_of(wide), [0, 1, 2], need=3).called.sum() == 3  # three at once: the fewest that could agree
    five = RoutingDataset(
        queries=np.array(["q"], dtype=object),
        experts=("a", "b", "c", "d"),
        scores=np.ones((1, 4)),
        costs=np.full((1, 4), 0.001),
        tags=((),),
        domains=np.array([""], dtype=object),
        split=np.array(["test"]),
        answers=np.array([["1", "2", "3", "1"]], dtype=object),
    )
    voting = vote(replay_of(five), [0, 1, 2, 3], need=3)
    assert voting.called[0].tolist() == [True, True, True, False]  # two more votes cannot come from one voter
    assert not voting.agreed[0]


def split_data(n: int = 60) -> RoutingDataset:
    """Easy rows (cheap and mid agree and are right) and hard ones (they disagree; dear is right, and mid on
    every other one, so that mid is more accurate than cheap)."""
    rows = [
        (["4", "4.0", "4"], [1, 1, 1]) if i % 3 else ([str(i), str(i + 1), "0"], [0, i % 2, 1]) for i in range(2 * n)
    ]
    data = dataset([a for a, _ in rows], [s for _, s in rows], [1.0, 2.0, 10.0])
    return RoutingDataset(**{**data.__dict__, "split": np.array(["dev"] * n + ["test"] * n)})


class PerfectQuality:
    """A candidate predicting each expert's recorded score: what the search trades against cost."""

    name, kind, experts, fixed_lambda = "perfect", "baseline", EXPERTS, None

    def expected_cost(self, data: RoutingDataset) -> np.ndarray:
        return data.costs.mean(axis=0)

    def score_dataset(self, data: RoutingDataset) -> np.ndarray:
        return data.scores.mean(axis=0)[None, :].repeat(len(data), axis=0)  # the same for every query


def test_the_dev_search_finds_the_cascade_and_the_report_scores_it_on_test() -> None:
    data = split_data()
    result = cascade.report(PerfectQuality(), data)
    assert result["kind"] == "cascade" and result["best_single"]["name"] == "dear"
    assert {"lambda", "cost", "accuracy", "voters", "need"} <= set(result["points"][0])
    assert any(not point["voters"] for point in result["dev_curve"])  # the router alone is on the curve
    chosen = result["chosen_on_dev"]["q100"]
    assert chosen["dev"]["voters"] == ["cheap", "mid"] and chosen["dev"]["need"] == 2
    # Voters on every row, dear on the third of them where they disagree: dear's accuracy at 3 + 10/3 per 1k.
    assert chosen["test"]["accuracy"] == pytest.approx(1.0)
    assert chosen["test"]["cost"] == pytest.approx(3 + 10 / 3)
    assert result["cost_at_95_accuracy"] < 3 + 10 / 3 and result["max_accuracy"] == pytest.approx(1.0)


def test_the_voter_pool_keeps_cheap_frontier_experts_cheapest_first() -> None:
    data = split_data().of_split("dev")
    assert cascade.voter_pool(replay_of(data)) == [0, 1]
    dominated = dataset([["1", "1", "1"]] * 2, [[1, 0, 1], [0, 0, 1]], [1.0, 2.0, 10.0])
    assert cascade.voter_pool(replay_of(dominated)) == [0]  # mid: dearer than cheap and no better


def test_data_without_answers_is_refused() -> None:
    data = RoutingDataset(**{**ROWS.__dict__, "answers": None})
    with pytest.raises(ValueError, match="no answers"):
        replay_of(data)


@pytest.mark.skipif(not ZEROEVAL.is_file(), reason="the shared ZeroEval pool is not here")
def test_zeroeval_agreement_of_three_cheap_voters_before_o1_mini() -> None:
    from training.dataset import load_dataset

    test = load_dataset(ZEROEVAL).of_split("test")
    names = ["gemini-1.5-flash", "deepseek-v2.5-0908", "gpt-4o-mini-2024-07-18"]
    replay = replay_of(test)
    o1 = np.full((1, len(test)), test.experts.index("o1-mini-2024-09-12"))
    for need, expected_accuracy, expected_cost in ((2, 0.8982, 3.01), (3, 0.9439, 6.14)):
        voting = vote(replay, [test.experts.index(name) for name in names], need)
        cost, accuracy = outcomes(replay, voting, o1)
        assert accuracy[0] == pytest.approx(expected_accuracy, abs=5e-4)
        assert cost[0] == pytest.approx(expected_cost, abs=5e-3)


def test_the_benchmark_adds_the_cascade_over_a_router_artifact(monkeypatch: pytest.MonkeyPatch) -> None:
    import training.evaluate

    data = split_data()
    loaded: list[Path] = []

    def load(directories: list[Path], _: RoutingDataset) -> tuple[list[PerfectQuality], list[dict]]:
        loaded.extend(directories)
        return ([PerfectQuality()], []) if directories[0].name == "fits" else ([], [{"name": "other"}])

    monkeypatch.setattr(training.evaluate, "load_router_candidates", load)
    candidate = cascade.cascade_candidate(Path("fits"), data, {"split": "dev"})
    assert loaded == [Path("fits")] and candidate["name"] == "cascade:perfect"
    assert candidate["points"] == candidate["dev_curve"]  # replayed on the report's split: dev here
    with pytest.raises(ValueError, match="does not route"):
        cascade.cascade_candidate(Path("elsewhere"), data, {"split": "test"})
