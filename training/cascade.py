"""Offline replay of routing and agreement together: cheap voters until enough agree, else the router's pick.

The strategy, per query (live: experts/combine.py's cascade with `escalate: router`):

1. ask the `voters` in order, each step the fewest next voters that could still bring `need` answers to one
   (normalised) answer; once they do, that answer is returned (in the words of the last voter giving it,
   the dearest of them, as voters go cheapest first);
2. when they no longer can (too few voters left), ask the router's pick at `lam`,
   `CostPolicy(lam).choose(quality, expected_cost)`; a pick already asked as a voter answers with the answer
   in hand. No voters at all is the router alone.

A query costs the recorded cost of every expert called. Answers are compared as experts/aggregate.py's
`normalise_answer` writes them (numbers by value, code output and short strings canonical, letters as letters),
so the replay on recorded answers and the live cascade on whole replies apply one rule.

`search` tries, for one router's predictions on dev: voters from the experts on dev's single-expert
cost-accuracy frontier that cost at most `CHEAP_SHARE` of the best single expert (the `MAX_VOTERS` most
accurate of them), every set of 2 to `MAX_SET` of them called cheapest first, every `need` from 2 to the
set's size, every lam of routers/policy.py's grid; and the router alone. The settings no other beats on dev
cost and accuracy are the curve; `report` replays them on test in training/evaluate.py's shape (points,
frontier, AUC, accuracy at half cost, cost at 95%) with, per target, the setting dev picks.

Two more rules were tried and left out, as neither paid on dev (search on one half of dev, score on the
other, three splits, both ZeroEval routers): going straight to the router's pick when it predicts the
voters weak, and asking one more voter to agree on queries it predicts hard. Voter orders other than
cheapest first, and voters off the frontier, did not pay either.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experts.aggregate import normalise_answer
from routers.dataset import RoutingDataset
from routers.frontier import choices
from routers.policy import lambda_grid
from training.evaluate import Candidate, Setting, columns_for, curve_metrics, frontier, oracle_of, reference_of

CHEAP_SHARE = 0.25  # a voter costs at most this share of the best single expert's mean cost
MAX_VOTERS = 6  # voter candidates: the most accurate of the cheap frontier experts
MAX_SET = 4  # voters asked at most
TARGETS = {"q95": 0.95, "q100": 1.0}  # shares of the best single expert's dev accuracy


@dataclass(frozen=True)
class CascadeSetting(Setting):
    """One point of the cascade's curve: `Setting`'s lam (the router's, for escalations), cost (USD per 1k
    queries) and accuracy, and the voters (by name, in calling order; none: the router alone) and `need`."""

    voters: tuple[str, ...] = ()
    need: int = 2

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "voters": list(self.voters), "need": self.need}


def answer_codes(answers: np.ndarray) -> np.ndarray:
    """int [n, m]: equal codes for equal normalised answers, -1 where there is none."""
    canonical: dict[str, str | None] = {}
    codes: dict[str, int] = {}
    result = np.full(answers.shape, -1, dtype=np.int64)
    for index, text in np.ndenumerate(answers):
        if not isinstance(text, str):
            continue
        if text not in canonical:
            canonical[text] = normalise_answer(text)
        if (key := canonical[text]) is not None:
            result[index] = codes.setdefault(key, len(codes))
    return result


@dataclass(frozen=True)
class Replay:
    """What the replay knows of one split: recorded scores [n, m] and costs [n, m], the answers' codes, the
    router's predicted quality [n, m] and the costs it expects (per expert [m] or per query [n, m])."""

    scores: np.ndarray
    costs: np.ndarray
    codes: np.ndarray
    quality: np.ndarray
    expected_cost: np.ndarray

    @classmethod
    def of(cls, data: RoutingDataset, quality: np.ndarray, expected_cost: np.ndarray) -> Replay:
        if data.answers is None:
            raise ValueError("the data records no answers: an agreement cascade has nothing to compare")
        return cls(data.scores, data.costs, answer_codes(data.answers), quality, expected_cost)

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class Voting:
    """The voters' part for every query: whether they agreed, on whose answer, who was asked at what cost."""

    agreed: np.ndarray  # bool [n]
    answer_of: np.ndarray  # int [n]: the column whose answer is returned (read only where agreed)
    called: np.ndarray  # bool [n, m]
    cost: np.ndarray  # float [n]


def vote(replay: Replay, voters: Sequence[int], need: int) -> Voting:
    """Step 1 for every query at once."""
    n, size = len(replay), len(voters)
    codes = replay.codes[:, list(voters)]
    # Per prefix of k voters: the most answers naming one answer, and the last voter naming it.
    counts, lasts = np.zeros((size + 1, n), dtype=np.int64), np.zeros((size + 1, n), dtype=np.int64)
    for k in range(1, size + 1):
        prefix = codes[:, :k]
        support = ((prefix[:, :, None] == prefix[:, None, :]) & (prefix[:, :, None] >= 0)).sum(axis=2)
        counts[k], lasts[k] = support.max(axis=1), k - 1 - support[:, ::-1].argmax(axis=1)
    rows = np.arange(n)
    asked = np.zeros(n, dtype=np.int64)
    agreed = np.zeros(n, dtype=bool)
    open_ = np.full(n, size > 0)
    for _ in range(size + 1):  # each step asks at least one more voter, the last one only looks
        needed = need - counts[asked, rows]
        agreed |= open_ & (needed <= 0)
        open_ &= (needed > 0) & (asked + needed <= size)  # past the last voter: agreement is out of reach
        asked = np.where(open_, asked + needed, asked)
    called = np.zeros(replay.scores.shape, dtype=bool)
    for position, column in enumerate(voters):
        called[:, column] = asked > position
    answer_of = np.asarray([*voters, 0])[lasts[asked, rows]]  # the 0 stands in when there are no voters
    return Voting(agreed, answer_of, called, (replay.costs * called).sum(axis=1))


def outcomes(replay: Replay, voting: Voting, picks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 2 for every lam's picks ([L, n]): mean cost (USD per 1k queries) and accuracy per lam."""
    rows = np.arange(len(replay))
    in_hand = voting.called[rows, picks]
    score = np.where(voting.agreed, replay.scores[rows, voting.answer_of], replay.scores[rows, picks])
    extra = np.where(voting.agreed | in_hand, 0.0, replay.costs[rows, picks])
    return (voting.cost + extra).mean(axis=1) * 1000, score.mean(axis=1)


def voter_pool(replay: Replay) -> list[int]:
    """The voter candidates, cheapest first: frontier experts (no other expert is cheaper and at least as
    accurate) costing at most `CHEAP_SHARE` of the most accurate one, the `MAX_VOTERS` most accurate of them."""
    accuracy, cost = replay.scores.mean(axis=0), replay.costs.mean(axis=0)
    cap = CHEAP_SHARE * cost[int(np.argmax(accuracy))]
    dominated = (cost[None, :] < cost[:, None]) & (accuracy[None, :] >= accuracy[:, None])  # [j, i]: i beats j
    cheap = [j for j in range(len(accuracy)) if cost[j] <= cap and not dominated[j].any()]
    return sorted(sorted(cheap, key=lambda j: -accuracy[j])[:MAX_VOTERS], key=lambda j: cost[j])


def _settings(
    replay: Replay, experts: Sequence[str], voters: Sequence[int], need: int, lambdas: np.ndarray
) -> list[CascadeSetting]:
    cost, accuracy = outcomes(replay, vote(replay, voters, need), choices(replay.quality, replay.expected_cost, lambdas))
    names = tuple(experts[j] for j in voters)
    return [
        CascadeSetting(float(lam), float(c), float(a), names, need)
        for lam, c, a in zip(lambdas, cost, accuracy, strict=True)
    ]


def search(replay: Replay, experts: Sequence[str]) -> list[CascadeSetting]:
    """Every setting of the search (module docstring) on `replay`; the curve is their `frontier`."""
    lambdas = lambda_grid(replay.quality, replay.expected_cost)
    found = _settings(replay, experts, (), 2, lambdas)  # the router alone
    pool = voter_pool(replay)
    for size in range(2, min(MAX_SET, len(pool)) + 1):
        for voters, need in itertools.product(itertools.combinations(pool, size), range(2, size + 1)):
            found += _settings(replay, experts, voters, need, lambdas)
    return found


def replay_settings(replay: Replay, experts: Sequence[str], settings: Sequence[CascadeSetting]) -> list[CascadeSetting]:
    """The same strategies on another split (chosen on dev, scored on test)."""
    return [
        _settings(replay, experts, [experts.index(name) for name in s.voters], s.need, np.array([s.lam]))[0]
        for s in settings
    ]


def pick_for_target(settings: Sequence[CascadeSetting], accuracy: float) -> CascadeSetting:
    """The cheapest setting reaching `accuracy`, else the most accurate one (ties: the cheaper)."""
    reaching = [s for s in settings if s.accuracy >= accuracy - 1e-12]
    if reaching:
        return min(reaching, key=lambda s: (s.cost, -s.accuracy))
    return max(settings, key=lambda s: (s.accuracy, -s.cost))


def report(candidate: Candidate, data: RoutingDataset, *, split: str = "test") -> dict[str, Any]:
    """The cascade on `candidate`'s predictions, searched on dev and replayed on `split`, reported as training/
    evaluate.py reports a candidate (`points`, `frontier`, `auc`, `accuracy_at_half_cost`, `cost_at_95_accuracy`,
    ...), with the dev curve and, per target share of the best single expert's dev accuracy, the setting dev
    picks and its figures on `split`."""
    columns = columns_for(candidate, data.experts)
    if columns is None:
        raise ValueError(f"{candidate.name} does not score every expert of the data")
    replays = {}
    for name in ("dev", split):
        part = data.of_split(name)
        quality = candidate.score_dataset(part)[:, columns]
        replays[name] = Replay.of(part, quality, candidate.expected_cost(part)[..., columns])
    dev_curve = frontier(search(replays["dev"], data.experts))
    held_out = replay_settings(replays[split], data.experts, dev_curve)
    held_out_data = data.of_split(split)
    reference = reference_of(held_out_data, oracle_of(held_out_data))
    best = int(np.argmax(replays[split].scores.mean(axis=0)))
    dev_best = float(replays["dev"].scores.mean(axis=0).max())
    chosen = {}
    for name, share in TARGETS.items():
        picked = pick_for_target(dev_curve, share * dev_best)
        chosen[name] = {"dev": picked.to_json(), split: held_out[dev_curve.index(picked)].to_json()}
    return {
        "name": f"cascade:{candidate.name}",
        "kind": "cascade",
        **curve_metrics(held_out, *reference),
        "latency_ms": None,
        "best_single": {"name": data.experts[best], "accuracy": reference[1], "cost": reference[0]},
        "dev_curve": [s.to_json() for s in dev_curve],
        "chosen_on_dev": chosen,
    }


def cascade_candidate(directory: Path, data: RoutingDataset, scenario: dict[str, Any]) -> dict[str, Any]:
    """The cascade over the router in `directory` (its predictions and expected costs, as training/evaluate.py
    loads it) as one more candidate of a scenario report (`run_scenario`): searched on `data`'s dev split,
    replayed on the report's split."""
    from training.evaluate import load_router_candidates

    routers, skipped = load_router_candidates([directory], data)
    if skipped:
        raise ValueError(f"{directory} does not route between the data's experts: no cascade over it")
    return report(routers[0], data, split=scenario.get("split", "test"))


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m training.cascade [--data ../shared/data/zeroeval_pool/routing.jsonl] [--routers true-label,logistic]`:
    each baseline's predictions as the router of the cascade, one JSON line per router (without the curves)."""
    from training.baselines import build_baselines
    from training.dataset import load_dataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="a pool directory or a routing JSONL (default: the MMLU-Pro pool)")
    parser.add_argument("--routers", default="true-label,logistic", help="baselines of training/baselines.py")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    data = load_dataset(args.data)
    for candidate in build_baselines(args.routers.split(","), data):
        result = report(candidate, data, split=args.split)
        print(json.dumps({k: v for k, v in result.items() if k not in ("points", "frontier", "dev_curve")}))


if __name__ == "__main__":
    main()
