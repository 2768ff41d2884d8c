"""`moe router retrain`: a candidate router version trained on the decision log's feedback.

1. Read a window of answered decisions with feedback (migrations/decision_window.py; the gateway is not needed)
   and turn them into bandit data: only the chosen expert's reward is known (training/log_data.py).
2. Optionally mix in fully scored rows of a base dataset (the MMLU-Pro pool or a JSONL), so the router does not
   forget what it was first trained on.
3. Fit a family that learns from partial scores (`Router.learns_from_partial_scores`): by default reward-distilled,
   whose head then learns each expert's log-odds of reward from the requests where that expert answered. The
   config's default family, embedding-domain, learns domains and no expert's quality: it cannot learn from rewards.
   The rewards the log does not know (the experts not chosen) are filled on the train rows with the parent's
   predictions, each counting PREDICTED_WEIGHT of an observed one (training/log_data.py `with_predicted` says why).
   0.1 was chosen among 0, 0.03, 0.1, 0.3 and 1 by the dev split's AUC, in an offline replay of bench/learning.py's
   traffic on the MMLU-Pro pool (figures in the commit that set it).
4. Value it off-policy on the held-out rows of the log (training/offpolicy.py: SNIPS and doubly robust, the
   candidate's own quality predictions as the reward model), and the parent (the router's active version, else the
   config's artifact) the same way, so a gate can ask for a gain; replay both on the base data's test split.
5. Write the artifact (router.json records the parent, the window, the record count, the data hash, the metrics
   and the candidate's cost-quality frontier on the base data's test split) into a temporary directory renamed
   into place at the end, and register it as a candidate version.

The data hash covers the rows and the options that shape the model, and names the version (`retrain-<hash>`): a
rerun on the same data finds the version it made and changes nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from sqlalchemy import create_engine

from migrations.decision_window import LoggedDecision, count_window, read_window
from migrations.router_versions import RouterVersions
from routers import ExpertProfile, Manifest, Router, load_router, router_class
from routers.dataset import RoutingDataset
from routers.features import DEFAULT_KIND, KINDS
from routers.manifest import data_hash
from routers.policy import CostPolicy, parse_knob
from training.log_data import WEIGHTINGS, BanditLog, Dropped, bandit_log, predictions, with_base, with_predicted
from training.offpolicy import dr_gain, estimate
from training.train import DEFAULT_CONFIG, load_expert_profiles

DEFAULT_FAMILY = "reward-distilled"
LATENCY_QUERIES = 200  # routed one at a time for the routing p95
PREDICTED_WEIGHT = 0.1
MIN_ROWS_PER_SPLIT = 2

Progress = Callable[[int], None]
OnStart = Callable[[str, int], Progress]  # a stage and its size -> how to advance it


class RetrainError(ValueError):
    """What stops a retrain; the message says why."""


@dataclass(frozen=True)
class RetrainRequest:
    router: str  # the config's router name
    out: Path
    database_url: str
    config: Path = DEFAULT_CONFIG
    family: str = DEFAULT_FAMILY
    since: datetime | None = None
    until: datetime | None = None  # None: now
    sources: tuple[str, ...] = ()  # feedback sources; () for all
    base_data: str | None = None  # a pool directory or a JSONL
    base_share: float = 0.5
    holdout: float = 0.2
    weighting: str = "none"  # or "ips"
    predicted_weight: float = PREDICTED_WEIGHT  # of a score the parent predicted where the log knows none; 0: none
    features: str = DEFAULT_KIND
    register: bool = True


@dataclass(frozen=True)
class RetrainResult:
    directory: Path | None  # None: the version is in the database only
    manifest: Manifest
    version_id: int | None  # None when not registered
    existing: bool  # the same data was retrained before: nothing new was made
    dropped: Dropped = field(default_factory=Dropped)


@dataclass(frozen=True)
class RouterSetup:
    """What the config says of one router: its experts, the virtual models it serves, its artifact."""

    experts: list[ExpertProfile]
    virtual_models: tuple[str, ...]
    artifact: Path | None


@dataclass(frozen=True)
class Parent:
    router: Router
    id: int | None  # its router version id; None for the config's artifact
    version: str


def router_setup(config: Path, router: str) -> RouterSetup:
    try:
        document = yaml.safe_load(config.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise RetrainError(f"cannot read the config {config}: {exc}") from None
    routers = {entry.get("name"): entry for entry in document.get("routers") or []}
    if router not in routers:
        raise RetrainError(f"{config} has no router {router!r}; its routers: {', '.join(map(str, routers)) or 'none'}")
    served = tuple(vm["name"] for vm in document.get("virtual_models") or [] if vm.get("router") == router)
    if not served:
        raise RetrainError(f"no virtual model of {config} is routed by {router!r}: it has no traffic to learn from")
    artifact = routers[router].get("artifact")
    return RouterSetup(load_expert_profiles(config), served, Path(artifact) if artifact else None)


def _noop(description: str, total: int) -> Progress:
    return lambda done: None


def retrain(request: RetrainRequest, on_start: OnStart = _noop) -> RetrainResult:
    cls = router_class(request.family)
    if not cls.learns_from_partial_scores:
        raise RetrainError(f"{request.family} cannot learn from bandit feedback (only the chosen expert's reward is "
                           f"known); use --family {DEFAULT_FAMILY}")
    if not 0 < request.holdout < 1:
        raise RetrainError("--holdout is a share of the records above 0 and below 1")
    if request.weighting not in WEIGHTINGS:
        raise RetrainError(f"unknown --weighting {request.weighting!r}; one of {', '.join(WEIGHTINGS)}")
    if request.predicted_weight < 0:
        raise RetrainError("--predicted-weight is at least 0 (0: no predicted rewards)")
    if request.features not in KINDS:
        raise RetrainError(f"unknown --features {request.features!r}; one of {', '.join(KINDS)}")
    setup = router_setup(request.config, request.router)
    engine = create_engine(request.database_url)
    until = request.until or datetime.now(UTC)
    window = {"since": request.since, "until": until, "virtual_models": setup.virtual_models,
              "sources": request.sources or None}
    tick = on_start("reading the decision log", count_window(engine, **window))
    log, dropped = bandit_log(_counted(read_window(engine, **window), tick), setup.experts, request.holdout)
    for split in ("train", "dev", "holdout"):
        if (log.split == split).sum() < MIN_ROWS_PER_SPLIT:
            raise RetrainError(f"{len(log)} usable records in the window ({dropped.no_prompt} without a stored prompt, "
                               f"{dropped.unknown_expert} for unconfigured experts): too few to train, tune and hold "
                               f"out {MIN_ROWS_PER_SPLIT} each")
    data = log.dataset(request.weighting)
    log_rows = len(data)
    base = _base_data(request.base_data, log.experts)
    if base is not None:
        data = with_base(data, base, request.base_share)
    versions = RouterVersions(engine)
    with tempfile.TemporaryDirectory(prefix="moe-parent-") as scratch:
        parent = _parent(versions, request.router, setup, Path(scratch))
        predicted_weight = request.predicted_weight if parent is not None else 0.0
        if parent is not None and predicted_weight > 0:
            data = with_predicted(data, predictions(parent.router, data), predicted_weight)
        # The parent's version too: its predictions fill the log's unknown rewards.
        fingerprint = data_hash([
            {"family": request.family, "features": request.features, "weighting": request.weighting,
             "holdout": request.holdout, "base_share": request.base_share if base is not None else None,
             "predicted_weight": predicted_weight, "parent": parent.version if predicted_weight > 0 else None},
            *log.fingerprint_rows(),
            *({"query": q, "scores": s} for q, s in zip(data.queries[log_rows:].tolist(),
                                                         data.scores[log_rows:].tolist(), strict=True)),
        ])
        version = f"retrain-{fingerprint}"
        if (found := _existing(versions, request, version)) is not None:
            return RetrainResult(found[0], found[1], found[2], existing=True, dropped=dropped)

        tick = on_start(f"training {request.family} on {len(data)} rows", 1)
        started = time.perf_counter()
        candidate = cls(setup.experts).fit(data.of_split("train"), data.of_split("dev"), features=request.features)
        tick(1)
        assert candidate.manifest is not None
        metrics = {"n_records": float(len(log)), "train_seconds": time.perf_counter() - started,
                   **holdout_metrics(candidate, parent, log.part("holdout"), on_start)}
        # The held-out log rows know only the chosen expert's reward and cost: no curve can be drawn from them, so
        # a candidate retrained without base data (or with none of it in a test split) keeps no cost-quality curve.
        if base is not None and (base.split == "test").any():
            replayed, curve = replay_metrics(candidate, parent, base.of_split("test"), on_start)
            metrics.update(replayed)
            candidate.manifest.params.update(curve)
    manifest = candidate.manifest
    manifest.version, manifest.data_hash = version, fingerprint
    manifest.metrics.update(metrics)
    manifest.params["retrain"] = {
        "parent_id": parent.id if parent else None,
        "parent_version": parent.version if parent else None,
        "since": request.since.isoformat() if request.since else None,
        "until": until.isoformat(),
        "records": len(log),
        "holdout_records": int((log.split == "holdout").sum()),
        "base_rows": len(data) - log_rows,
        "feedback_sources": list(request.sources),
        "virtual_models": list(setup.virtual_models),
        "base_data": request.base_data,
        "base_share": request.base_share if base is not None else None,
        "weighting": request.weighting,
        "predicted_weight": predicted_weight,
        "dropped_without_prompt": dropped.no_prompt,
        "dropped_unknown_expert": dropped.unknown_expert,
    }
    _save_whole(candidate, request.out)
    info = versions.register(request.router, request.out, parent_id=parent.id if parent else None) \
        if request.register else None
    return RetrainResult(request.out, manifest, info.id if info else None, existing=False, dropped=dropped)


def _counted(rows: Iterable[LoggedDecision], tick: Progress) -> Iterator[LoggedDecision]:
    for row in rows:
        tick(1)
        yield row


def _base_data(source: str | None, experts: Sequence[str]) -> RoutingDataset | None:
    if source is None:
        return None
    from training.dataset import load_dataset

    try:
        base = load_dataset(source)
    except (OSError, ValueError) as exc:
        raise RetrainError(f"cannot load the base data {source}: {exc}") from None
    missing = [name for name in experts if name not in base.experts]
    if missing:
        raise RetrainError(f"the base data {source} does not score the configured experts {missing}")
    return base.with_experts(experts)


def _existing(
    versions: RouterVersions, request: RetrainRequest, version: str
) -> tuple[Path | None, Manifest, int | None] | None:
    """The version these data made before: registered (its id), or only written to `out` (registered now)."""
    registered = [info for info in versions.list(request.router) if info.version == version]
    manifest = Manifest.read(request.out) if (request.out / "router.json").is_file() else None
    if manifest is not None and manifest.version != version:
        raise RetrainError(f"{request.out} holds another router version ({manifest.version}); choose another --out")
    if manifest is None and request.out.exists() and any(request.out.iterdir()):
        raise RetrainError(f"{request.out} is not empty and holds no router artifact; choose another --out")
    if registered:
        found = manifest or _manifest_of(versions, registered[0].id)
        return (request.out if manifest else None), found, registered[0].id
    if manifest is None:
        return None
    parent_id = manifest.params.get("retrain", {}).get("parent_id")
    info = versions.register(request.router, request.out, parent_id=parent_id) if request.register else None
    return request.out, manifest, info.id if info else None


def _manifest_of(versions: RouterVersions, version_id: int) -> Manifest:
    with tempfile.TemporaryDirectory(prefix="moe-version-") as scratch:
        return Manifest.read(versions.artifact(version_id, Path(scratch) / "artifact"))


def _parent(versions: RouterVersions, router: str, setup: RouterSetup, scratch: Path) -> Parent | None:
    """The router's active version, else the config's artifact; None when there is neither."""
    active = versions.serving(router).get("active")
    if active is not None:
        directory, parent_id = versions.artifact(active.id, scratch / "active"), active.id
    elif setup.artifact is not None and (setup.artifact / "router.json").is_file():
        directory, parent_id = setup.artifact, None
    else:
        return None
    manifest = Manifest.read(directory)
    by_name = {expert.name: expert for expert in setup.experts}
    profiles = [by_name.get(name, ExpertProfile(name)) for name in manifest.experts]
    return Parent(load_router(directory, profiles), parent_id, manifest.version)


def choices(router: Router, texts: Sequence[str], knobs: Sequence[str | None], experts: Sequence[str]) -> np.ndarray:
    """The expert column each request goes to under `router`, with the request's cost knob as the router would
    read it (a knob it cannot read: pure quality); -1 for an expert outside `experts`."""
    calibration = router.manifest.params.get("calibration") if router.manifest else None
    column = {name: i for i, name in enumerate(experts)}
    queries = [([{"role": "user", "content": text}], _policy(knob, calibration)) for text, knob in zip(texts, knobs,
                                                                                                      strict=True)]
    return np.array([column.get(decision.chosen, -1) for decision in router.decide_many(queries)], dtype=np.int64)


def _policy(knob: str | None, calibration: dict[str, float] | None) -> CostPolicy | None:
    if not knob:
        return None
    try:
        return parse_knob(knob, calibration)
    except ValueError:
        return None


def holdout_metrics(candidate: Router, parent: Parent | None, holdout: BanditLog, on_start: OnStart) -> dict[str, float]:
    """Off-policy values of the candidate and the parent on the held-out records, their difference, the
    candidate's share of requests per expert and its routing latency."""
    tick = on_start("valuing off-policy on the held-out records", len(holdout))
    texts = holdout.texts.tolist()
    predicted = candidate.score(texts)
    picks = choices(candidate, texts, holdout.knobs, holdout.experts)
    shares = np.bincount(picks, minlength=len(holdout.experts)) / len(holdout)
    mine = estimate(picks, holdout.action, holdout.propensity, holdout.reward, predicted)
    metrics = {"n_holdout": float(len(holdout)), "holdout_mean_reward": float(holdout.reward.mean()),
               **mine.metrics("offpolicy"), "expert_share_max": float(shares.max()),
               "expert_share_min": float(shares.min())}
    if parent is not None:
        theirs = choices(parent.router, texts, holdout.knobs, holdout.experts)
        if (theirs >= 0).all():
            before = estimate(theirs, holdout.action, holdout.propensity, holdout.reward, predicted)
            metrics.update(before.metrics("parent_offpolicy"))
            metrics["offpolicy_gain_dr"], metrics["offpolicy_gain_dr_stderr"] = dr_gain(mine, before)
            if mine.snips is not None and before.snips is not None:
                metrics["offpolicy_gain_snips"] = mine.snips - before.snips
    tick(len(holdout))
    return {**metrics, **routing_latency(candidate, texts[:LATENCY_QUERIES], on_start)}


def routing_latency(router: Router, texts: Sequence[str], on_start: OnStart) -> dict[str, float]:
    """p50 and p95 of one `decide` at a time, as a gateway routes a request, in milliseconds."""
    if not texts:
        return {}
    tick = on_start("timing routing", len(texts))
    router.decide([{"role": "user", "content": texts[0]}])  # warm caches, as a serving gateway is
    elapsed = []
    for text in texts:
        started = time.perf_counter()
        router.decide([{"role": "user", "content": text}], CostPolicy())
        elapsed.append((time.perf_counter() - started) * 1000)
        tick(1)
    return {"routing_p50_ms": float(np.percentile(elapsed, 50)), "routing_p95_ms": float(np.percentile(elapsed, 95))}


def replay_metrics(
    candidate: Router, parent: Parent | None, test: RoutingDataset, on_start: OnStart
) -> tuple[dict[str, float], dict[str, Any]]:
    """Best accuracy and area under the cost-quality curve on the base data's test split (training/evaluate.py),
    the candidate's and, when it routes between the same experts, the parent's; and the candidate's frontier as its
    manifest keeps it (`kept_frontier`: the dashboard's cost-quality plot)."""
    from training.evaluate import RouterCandidate, evaluate, kept_frontier

    routers = [("base_test", candidate)] + ([("parent_base_test", parent.router)] if parent else [])
    runs = [RouterCandidate(router, test.mean_cost(), label=prefix) for prefix, router in routers]
    report = evaluate(runs, test, latency_queries=0, on_start=on_start)
    metrics: dict[str, float] = {}
    curve: dict[str, Any] = {}
    for result in report["candidates"]:
        metrics[f"{result['name']}_accuracy"] = float(result["max_accuracy"])
        metrics[f"{result['name']}_auc"] = float(result["auc"])
        if result["name"] == "base_test":
            curve = kept_frontier(result["frontier"], "test")
    if "parent_base_test_auc" in metrics:
        for name in ("accuracy", "auc"):
            metrics[f"base_test_{name}_change"] = metrics[f"base_test_{name}"] - metrics[f"parent_base_test_{name}"]
    return metrics, curve


def _save_whole(router: Router, out: Path) -> None:
    """Save into a temporary sibling of `out`, renamed into place once complete: a crash leaves no partial version."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        router.save(partial)
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
