"""Offline replay: routers and baselines on one split, cost-quality curves and the metrics read off them.

Every candidate (a trained router or a baseline) predicts a quality per expert for each query; the
cost policy (routers/policy.py) turns the predictions into a choice for each lam of a sweep; the
choice is scored with the dataset's recorded answers:

- accuracy = mean of `scores` at the chosen expert; cost = mean of `costs` at the chosen expert, in
  USD per 1k queries. One (cost, accuracy) point per lam; baselines pinned to one lam give one point.
- frontier: the points no other point beats on both cost and accuracy.
- envelope: the upper concave hull of the frontier. Any point on it is reachable by sending each query
  to one of two neighbouring settings at random, so it is the fair curve to interpolate on.
- auc (curves only, None for one-point baselines): the envelope's mean accuracy over the common cost axis [cheapest, dearest single expert's
  cost] of the split; the envelope is flat right of its last point (spending more is never forced)
  and counts 0 left of its first (the candidate cannot run that cheaply).
- accuracy_at_half_cost: the envelope at 50% of the best single expert's cost (None if out of reach);
  cost_at_95_accuracy: the least cost at which it reaches 95% of the best single expert's accuracy.
- oracle_gap: oracle accuracy minus the candidate's best accuracy.
- latency_ms: p50/p99 of routing one query at a time (`decide`) on this machine, for candidates that
  route from the query's text.
- recorded_cost (curves only): the same curve and metrics when the policy trades quality against each
  answer's recorded cost instead of the candidate's expected cost. That is how the pool README scored
  its plain baseline (on question stems it reproduces its 0.5746 at $0.1454), so it is the protocol its reference
  figures compare with; no router can do this live, since an answer's length, and so its cost, is
  known only once the answer is written, and long answers are the wrong ones more often.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from routers import one_blas_thread
from routers.base import Router
from routers.dataset import RoutingDataset
from routers.frontier import (
    Setting,
    accuracy_at,
    area_under,
    choices,
    cost_at,
    envelope,
    frontier,
    settings_of,
    sweep,
)
from routers.policy import CostPolicy, lambda_grid
from training.baselines import Oracle
from training.bootstrap import Outcomes, paired_leads

LATENCY_QUERIES = 200
SCORE_BATCH = 256

Progress = Callable[[int], None]  # called with the number of queries just handled


class Candidate(Protocol):
    name: str
    kind: str  # router / baseline / reference
    experts: tuple[str, ...]
    fixed_lambda: float | None  # None: swept into a curve

    def expected_cost(self, data: RoutingDataset) -> np.ndarray:
        """USD the policy expects each expert to cost: per expert [m], or per query of `data` [n, m]."""

    def score_dataset(self, data: RoutingDataset) -> np.ndarray: ...


class RouterCandidate:
    """A trained router seen as a candidate: its predictions, its own expected costs, its `decide`."""

    kind = "router"
    fixed_lambda = None

    def __init__(self, router: Router, fallback_cost: np.ndarray, label: str | None = None) -> None:
        self.router = router
        self.name = label or router.name
        self.experts = tuple(expert.name for expert in router.experts)
        has_measured = bool(router.manifest and router.manifest.params.get("mean_cost"))
        # Without a measured mean cost in its manifest, the router is credited with the data's own.
        self._cost = router.expected_cost() if has_measured else fallback_cost

    def expected_cost(self, data: RoutingDataset) -> np.ndarray:
        if self.router.cost_model is not None:  # what its `decide` trades against: each query's predicted cost
            return self.router.query_cost(list(data.queries))
        return self._cost

    def score_dataset(self, data: RoutingDataset, progress: Progress | None = None) -> np.ndarray:
        parts = []
        for start in range(0, len(data), SCORE_BATCH):
            batch = list(data.queries[start : start + SCORE_BATCH])
            parts.append(np.asarray(self.router.score(batch), dtype=np.float64))
            if progress:
                progress(len(batch))
        return np.concatenate(parts) if parts else np.zeros((0, len(self.experts)))

    def decide_one(self, text: str, policy: CostPolicy) -> str:
        return self.router.decide([{"role": "user", "content": text}], policy).chosen


def columns_for(candidate: Candidate, experts: Sequence[str]) -> list[int] | None:
    """The candidate's columns for the scenario's experts, in scenario order; None if it lacks one."""
    if not set(experts) <= set(candidate.experts):
        return None
    return [candidate.experts.index(name) for name in experts]


def routing_latency(
    candidate: Any, texts: Sequence[str], policy: CostPolicy, progress: Progress | None = None
) -> dict[str, float]:
    """p50/p99 milliseconds of routing each text on its own (after one warm-up call), with BLAS on one thread as
    the gateway routes."""
    elapsed = []
    with one_blas_thread():
        candidate.decide_one(texts[0], policy)
        for text in texts:
            started = time.perf_counter()
            candidate.decide_one(text, policy)
            elapsed.append((time.perf_counter() - started) * 1000)
            if progress:
                progress(1)
    return {"p50": float(np.percentile(elapsed, 50)), "p99": float(np.percentile(elapsed, 99)), "n": len(elapsed)}


def curve_metrics(
    settings: Sequence[Setting],
    best_cost: float,
    best_accuracy: float,
    axis: tuple[float, float],
    oracle: float,
    *,
    curve: bool = True,
) -> dict[str, Any]:
    """The metrics read off one sweep; `best_*` are the best single expert's cost and accuracy; a pinned
    lam (`curve` False) gives one point, which has no area under it."""
    hull = envelope(settings)
    top = max(settings, key=lambda s: (s.accuracy, -s.cost))
    return {
        "points": [s.to_json() for s in settings],
        "frontier": [s.to_json() for s in frontier(settings)],
        "max_accuracy": top.accuracy,
        "cost_at_max_accuracy": top.cost,
        "auc": area_under(hull, *axis) if curve else None,
        "accuracy_at_half_cost": accuracy_at(hull, 0.5 * best_cost),
        "cost_at_95_accuracy": cost_at(hull, 0.95 * best_accuracy),
        "oracle_gap": oracle - top.accuracy,
    }


def reference_of(data: RoutingDataset, oracle: Setting) -> tuple[float, float, tuple[float, float], float]:
    """What every curve on `data` is read against (`curve_metrics`' arguments after the settings): the best single
    expert's cost (USD per 1k queries) and accuracy, the cost axis from the cheapest to the dearest single expert,
    and the accuracy of `oracle` (`oracle_of(data)`)."""
    single_cost, single_accuracy = data.costs.mean(axis=0) * 1000, data.scores.mean(axis=0)
    best = int(np.argmax(single_accuracy))
    axis = (float(single_cost.min()), float(single_cost.max()))
    return float(single_cost[best]), float(single_accuracy[best]), axis, oracle.accuracy


def oracle_of(data: RoutingDataset) -> Setting:
    """The oracle's one setting on `data`: the cheapest of the best answers, per query."""
    return sweep(Oracle(data.experts).score_dataset(data), np.zeros(len(data.experts)), data, [0.0])[0]


def evaluate(
    candidates: Sequence[Candidate],
    data: RoutingDataset,
    *,
    latency_queries: int = LATENCY_QUERIES,
    on_start: Callable[[str, int], Progress] | None = None,
    paired_with: str | None = None,
) -> dict[str, Any]:
    """Replay `candidates` on `data` (one split, its experts = the scenario); the report as JSON-ready dicts.

    Candidates lacking one of the scenario's experts are listed under `skipped`. `on_start(task, total)`
    is told of each stage and returns a callback to report progress through it (for progress bars).
    `paired_with`: a candidate's name; every other curve then gets `paired`, that candidate's lead over it with
    its bootstrap interval (training/bootstrap.py).
    """
    single_cost, single_accuracy = data.costs.mean(axis=0) * 1000, data.scores.mean(axis=0)
    best = int(np.argmax(single_accuracy))
    oracle = oracle_of(data)
    reference = reference_of(data, oracle)
    rng = np.random.default_rng(0)
    timing_texts = list(rng.choice(data.queries, size=min(latency_queries, len(data)), replace=False))

    results, skipped = [], []
    outcomes: dict[str, Outcomes] = {}
    for candidate in candidates:
        columns = columns_for(candidate, data.experts)
        if columns is None:
            skipped.append({"name": candidate.name, "experts": list(candidate.experts)})
            continue
        tick = on_start(f"scoring {candidate.name}", len(data)) if on_start else None
        if isinstance(candidate, RouterCandidate):
            quality = candidate.score_dataset(data, tick)
        else:
            quality = candidate.score_dataset(data)
            if tick:
                tick(len(data))
        quality, cost = quality[:, columns], candidate.expected_cost(data)[..., columns]
        lambdas = [candidate.fixed_lambda] if candidate.fixed_lambda is not None else lambda_grid(quality, cost)
        chosen = choices(quality, cost, lambdas)
        settings = settings_of(chosen, data, lambdas)
        result: dict[str, Any] = {
            "name": candidate.name,
            "kind": candidate.kind,
            **curve_metrics(settings, *reference, curve=candidate.fixed_lambda is None),
            "latency_ms": None,
        }
        if candidate.fixed_lambda is None:
            recorded = sweep(quality, data.costs, data, lambda_grid(quality, data.costs))
            result["recorded_cost"] = curve_metrics(recorded, *reference)
            if paired_with is not None:
                outcomes[candidate.name] = Outcomes.of(chosen, data, lambdas)
        if hasattr(candidate, "decide_one") and timing_texts:
            tick = on_start(f"latency {candidate.name}", len(timing_texts)) if on_start else None
            result["latency_ms"] = routing_latency(candidate, timing_texts, CostPolicy(), tick)
        results.append(result)
    if paired_with in outcomes:
        leads = paired_leads(outcomes, paired_with, data)
        for result in results:
            if result["name"] in leads:
                result["paired"] = {"leader": paired_with, **leads[result["name"]]}

    return {
        "n": len(data),
        "experts": list(data.experts),
        "best_single": {
            "name": data.experts[best],
            "accuracy": float(single_accuracy[best]),
            "cost": float(single_cost[best]),
        },
        "singles": {
            name: {"accuracy": float(a), "cost": float(c)}
            for name, a, c in zip(data.experts, single_accuracy, single_cost, strict=True)
        },
        "oracle": {"accuracy": oracle.accuracy, "cost": oracle.cost},
        "cost_axis": list(reference[2]),
        "candidates": results,
        "frontier": overall_frontier(results),
        "skipped": skipped,
    }


def kept_frontier(points: Sequence[dict[str, float]], split: str) -> dict[str, Any]:
    """A candidate's `frontier` (from `evaluate`) as a router manifest keeps it in `params`, for the dashboard's
    cost-quality plot: lam and cost (USD per 1k queries, what the dashboard plots, as `cost_quality_unit` says) to 4
    significant digits, accuracy to 4 decimals, thinned again so rounding leaves no tie."""
    rounded = [Setting(_digits(p["lambda"]), _digits(p["cost"]), round(p["accuracy"], 4)) for p in points]
    return {
        "cost_quality": [s.to_json() for s in frontier(rounded)],
        "cost_quality_split": split,
        "cost_quality_unit": "USD per 1k queries",
    }


def _digits(value: float) -> float:
    return float(f"{value:.4g}")


def router_frontier(router: Router, held_out: RoutingDataset, train: RoutingDataset, split: str) -> dict[str, Any]:
    """`kept_frontier` of a freshly trained router replayed on `held_out` (rows of `split`; a router without
    measured costs is credited with `train`'s mean cost per expert); {} when `held_out` is empty or does not score
    every expert the router routes between (embedding-domain routes between a config's experts, not the data's)."""
    if not len(held_out):
        return {}
    cost = mean_cost_of([expert.name for expert in router.experts], train)
    report = evaluate([RouterCandidate(router, cost)], held_out, latency_queries=0)
    return kept_frontier(report["candidates"][0]["frontier"], split) if report["candidates"] else {}


def mean_cost_of(experts: Sequence[str], data: RoutingDataset) -> np.ndarray:
    """`data`'s mean cost of an answer by each of `experts`, 0 for one it does not score (e.g. no rows)."""
    mean = data.mean_cost() if len(data) else np.zeros(len(data.experts))
    return np.array([mean[data.experts.index(name)] if name in data.experts else 0.0 for name in experts])


def overall_frontier(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The non-dominated settings over every non-reference candidate, each labelled with its candidate."""
    labelled = [
        (Setting(p["lambda"], p["cost"], p["accuracy"]), r["name"])
        for r in results
        if r["kind"] != "reference"
        for p in r["points"]
    ]
    best = frontier([setting for setting, _ in labelled])
    owner = {id(setting): name for setting, name in labelled}
    return [{"name": owner[id(s)], **s.to_json()} for s in best]


def load_router_candidates(
    directories: Sequence[Path], data: RoutingDataset
) -> tuple[list[RouterCandidate], list[dict[str, Any]]]:
    """Routers from artifact directories, labelled by directory name; those that cannot route between
    `data`'s experts (e.g. embedding-domain, which routes between config experts) are skipped unloaded."""
    from routers import ExpertProfile, Manifest, load_router

    priced = data.of_split("train") if (data.split == "train").any() else data
    loaded, skipped = [], []
    for directory in directories:
        manifest = Manifest.read(directory)
        if not set(data.experts) <= set(manifest.experts):
            skipped.append({"name": directory.name, "experts": manifest.experts})
            continue
        router = load_router(directory, [ExpertProfile(name) for name in manifest.experts])
        loaded.append(RouterCandidate(router, mean_cost_of(manifest.experts, priced), label=directory.name))
    return loaded, skipped


def summary_table(report: dict[str, Any], title: str) -> Any:
    """A rich Table of one scenario's candidates and their headline metrics, readable in 80 columns: routers
    above the line, baselines below; the JSON report holds every figure at full precision."""
    from rich import box
    from rich.table import Table

    def fmt(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    best, oracle = report["best_single"], report["oracle"]
    table = Table(
        title=f"{title}\nbest single {best['name']} {best['accuracy']:.3f} at ${best['cost']:.4f}/1k; "
        f"oracle {oracle['accuracy']:.3f} at ${oracle['cost']:.4f}/1k",
        box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False,
        caption="acc: best accuracy, at $/1k queries; acc@½$: accuracy at half the best single's cost; $@95%: $/1k "
        "at 95% of its accuracy; AUC: area under the cost-quality curve; gap: to the oracle; ms: routing p50",
    )
    table.add_column("candidate", no_wrap=True)
    for column in ("acc", "$/1k", "acc@½$", "$@95%", "AUC", "gap", "ms"):
        table.add_column(column, justify="right", no_wrap=True)
    ranked = sorted(report["candidates"], key=lambda r: (r["kind"] != "router", r["auc"] is None,
                                                          -(r["auc"] or r["max_accuracy"])))
    for previous, r in zip([None, *ranked], ranked, strict=False):
        if previous is not None and previous["kind"] != r["kind"]:
            table.add_section()
        table.add_row(
            r["name"],
            fmt(r["max_accuracy"]),
            fmt(r["cost_at_max_accuracy"], 4),
            fmt(r["accuracy_at_half_cost"]),
            fmt(r["cost_at_95_accuracy"], 4),
            fmt(r["auc"]),
            fmt(r["oracle_gap"]),
            fmt((r["latency_ms"] or {}).get("p50"), 2),
        )
    return table


def run_scenario(
    data: RoutingDataset,
    split: str,
    router_dirs: Sequence[Path],
    baselines: Sequence[str],
    *,
    knn_k: int = 40,
    latency_queries: int = LATENCY_QUERIES,
    on_start: Callable[[str, int], Progress] | None = None,
    paired_with: str | None = None,
) -> dict[str, Any]:
    """Fit the baselines on `data`'s train split, load the routers, replay everything on `split` (`evaluate`)."""
    from training.baselines import build_baselines

    routers, skipped = load_router_candidates(router_dirs, data)
    candidates: list[Any] = [*routers, *build_baselines(baselines, data, knn_k=knn_k)]
    report = evaluate(
        candidates, data.of_split(split), latency_queries=latency_queries, on_start=on_start, paired_with=paired_with
    )
    report["split"] = split
    report["skipped"] = skipped + report["skipped"]
    return report
