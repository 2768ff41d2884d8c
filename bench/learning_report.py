"""The learning benchmark's figures: every router replayed on the pool's test split by training/evaluate.py (the
project's one evaluator), the recovery curve, the off-policy estimates against measured accuracy, the targets and
the plot."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.learning_client import Exchange
from routers import Manifest
from routers.dataset import RoutingDataset
from training.dataset import from_pool
from training.evaluate import evaluate, load_router_candidates, run_scenario
from training.pool import Pool

RECOVERY_TARGET = 0.5
OFFPOLICY_TOLERANCE = 0.03
# What the retrain wrote of its off-policy valuation on the held-out records (training/retrain.py).
OFFPOLICY_METRICS = ("n_records", "n_holdout", "offpolicy_dr", "offpolicy_dr_stderr", "offpolicy_snips",
                     "offpolicy_matched", "parent_offpolicy_dr", "offpolicy_gain_dr")


def _replayed(result: dict[str, Any]) -> dict[str, float]:
    """A candidate's area under the cost-quality curve, and the accuracy of its top choice (the sweep's lambda 0:
    what the gateway serves without a cost knob)."""
    top = next(point for point in result["points"] if point["lambda"] == 0.0)
    return {"auc": result["auc"], "top_choice_accuracy": top["accuracy"], "top_choice_cost": top["cost"],
            "max_accuracy": result["max_accuracy"]}


def top_choice_accuracy(data: RoutingDataset, directory: Path) -> float:
    """A router's top-choice accuracy on `data`, every expert's reward known: what an off-policy estimate on the
    same questions estimates."""
    candidates, _ = load_router_candidates([directory], data)
    return _replayed(evaluate(candidates, data, latency_queries=0)["candidates"][0])["top_choice_accuracy"]


def measure(pool: Pool, start: Path, retrained: Mapping[int, Path], full: Mapping[int, Path],
            manifests: Mapping[int, Manifest], held_out: Mapping[int, np.ndarray]) -> dict[str, Any]:
    """The start, retrained and full-information routers on the test split; per checkpoint the recovery of the AUC
    gap (with the bootstrap intervals of the gap and of the retrained router's gain: a gap inside the test split's
    noise makes the ratio noise too) and the retrain's off-policy estimate against the candidate's measured
    top-choice accuracy, on the test split (the target) and on the held-out logged questions it was computed from
    (`held_out`: their pool rows), which tells the estimator's own error from the difference between the train and
    test questions."""
    dataset = from_pool(pool)
    directories = [start, *retrained.values(), *full.values()]
    report = run_scenario(dataset, "test", directories, [], latency_queries=0, paired_with=start.name)
    by_name = {result["name"]: _replayed(result) for result in report["candidates"]}
    # Each router's AUC gain over the start, 95% interval over resamples of the test questions (training/bootstrap.py).
    gain_interval = {result["name"]: [-bound for bound in reversed(result["paired"]["auc"]["interval"])]
                     for result in report["candidates"] if "paired" in result}
    begin = by_name[start.name]
    checkpoints = []
    for logged, directory in retrained.items():
        mine, best = by_name[directory.name], by_name[full[logged].name]
        gap = best["auc"] - begin["auc"]
        metrics = manifests[logged].metrics
        estimate = metrics.get("offpolicy_dr")
        on_held_out = top_choice_accuracy(dataset.subset(held_out[logged]), directory)
        checkpoints.append({
            "logged": logged,
            "retrained": {"version": manifests[logged].version, **mine},
            "full_information": best,
            "auc_gap": gap,
            "auc_gap_interval_95": gain_interval[full[logged].name],
            "retrained_gain_interval_95": gain_interval[directory.name],
            "recovery": (mine["auc"] - begin["auc"]) / gap if gap > 0 else None,
            "offpolicy": {**{name: metrics.get(name) for name in OFFPOLICY_METRICS},
                          "measured_top_choice_accuracy": mine["top_choice_accuracy"],
                          "dr_error": None if estimate is None else estimate - mine["top_choice_accuracy"],
                          "held_out_questions": len(held_out[logged]),
                          "held_out_top_choice_accuracy": on_held_out,
                          "dr_error_on_held_out": None if estimate is None else estimate - on_held_out},
        })
    return {
        "test": {"n": report["n"], "best_single": report["best_single"], "oracle": report["oracle"],
                 "cost_axis": report["cost_axis"]},
        "start": begin,
        "checkpoints": checkpoints,
        "curve": [{"logged": c["logged"], "recovery": c["recovery"]} for c in checkpoints],
    }


def summary(exchanges: Sequence[Exchange], wall_s: float) -> dict[str, Any]:
    """The traffic the log was made of: requests, failures, exploration, which experts answered."""
    answered = [e for e in exchanges if e.expert is not None]
    return {
        "requests": len(exchanges),
        "failed": sum(e.error is not None for e in exchanges),
        "error_kinds": dict(Counter(e.error for e in exchanges if e.error)),
        "explored_share": round(sum(e.explored for e in answered) / max(1, len(answered)), 4),
        "mean_reward": round(sum(e.reward or 0.0 for e in answered) / max(1, len(answered)), 4),
        "answered_by": dict(Counter(e.expert for e in answered).most_common()),
        "routers_seen": dict(Counter(e.router or "none" for e in exchanges)),
        "wall_s": round(wall_s, 1),
        "requests_per_s": round(len(exchanges) / wall_s, 1) if wall_s else None,
    }


def targets(report: dict[str, Any]) -> dict[str, Any]:
    """Issue 15's three checks on the last checkpoint and the switch."""
    last = report["checkpoints"][-1]
    offpolicy = last["offpolicy"]
    switch = report["switch"]
    return {
        "recovery": {"logged": last["logged"], "recovery": last["recovery"], "required": RECOVERY_TARGET,
                     "met": last["recovery"] is not None and last["recovery"] >= RECOVERY_TARGET},
        "offpolicy_estimate": {"estimate_dr": offpolicy["offpolicy_dr"],
                               "measured": offpolicy["measured_top_choice_accuracy"],
                               "error": offpolicy["dr_error"], "tolerance": OFFPOLICY_TOLERANCE,
                               "error_on_held_out_questions": offpolicy["dr_error_on_held_out"],
                               "met": offpolicy["dr_error"] is not None
                               and abs(offpolicy["dr_error"]) <= OFFPOLICY_TOLERANCE},
        "switch": {"promoted_through_the_gate": switch["promoted_through_the_gate"],
                   "header_changed": switch["first_new_version_at_s"] is not None,
                   "failed_requests": switch["failed"],
                   "met": switch["first_new_version_at_s"] is not None and switch["failed"] == 0},
    }


def plot(report: dict[str, Any], path: Path) -> None:
    """Recovery of the AUC gap against requests logged; beside it the AUCs themselves, and the off-policy estimates
    against the accuracy they estimate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = report["checkpoints"]
    logged = [c["logged"] for c in points]
    fig, (left, right, estimates) = plt.subplots(1, 3, figsize=(18, 4.8))
    left.plot(logged, [c["recovery"] for c in points], marker="o", lw=2, label="retrained from the log")
    left.axhline(RECOVERY_TARGET, color="black", ls=":", lw=1, label=f"target {RECOVERY_TARGET:g}")
    left.axhline(0, color="grey", lw=0.6)
    left.set_ylabel("recovery of the AUC gap, start -> full information")
    left.set_title("recovery against requests logged")
    start = report["start"]["auc"]
    for key, interval, style, label in (("retrained", "retrained_gain_interval_95", {"marker": "o", "lw": 2},
                                         "retrained from the log"),
                                        ("full_information", "auc_gap_interval_95", {"marker": "s", "ls": "--"},
                                         "full information, same questions")):
        auc = np.array([c[key]["auc"] for c in points])
        bounds = np.array([c[interval] for c in points]) + start  # the gain's 95% interval, over resampled questions
        right.errorbar(logged, auc, yerr=[auc - bounds[:, 0], bounds[:, 1] - auc], capsize=3,
                       label=f"{label} (95% interval of its gain)", **style)
    right.axhline(start, color="grey", ls=":",
                  label=f"start ({report['settings']['start_questions']} questions)")
    right.set_ylabel("AUC of the cost-quality curve (test split)")
    right.set_title("area under the cost-quality curve")
    offpolicy = [c["offpolicy"] for c in points]
    estimates.errorbar(logged, [o["offpolicy_dr"] for o in offpolicy],
                       yerr=[o["offpolicy_dr_stderr"] for o in offpolicy], marker="o", capsize=3, lw=2,
                       label="doubly robust estimate (held-out records, +-1 s.e.)")
    estimates.plot(logged, [o["held_out_top_choice_accuracy"] for o in offpolicy], marker="^", ls="--",
                   label="actual, same held-out questions (every reward known)")
    estimates.plot(logged, [o["measured_top_choice_accuracy"] for o in offpolicy], marker="s", ls="--",
                   label="measured on the test split")
    estimates.set_ylabel("accuracy of the candidate's top choice")
    estimates.set_title("off-policy estimate against measured")
    for ax in (left, right, estimates):
        ax.set_xscale("log")
        ax.set_xlim(logged[0] / 1.3, logged[-1] * 1.3)
        ax.set_xticks(logged, [str(n) for n in logged])
        ax.minorticks_off()
        ax.set_xlabel("requests logged (with feedback)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    exploration = report["settings"]["exploration"]
    fig.suptitle(f"{report['settings']['family']} retrained from bandit feedback through the gateway "
                 f"(epsilon {exploration['epsilon']:g}, {exploration['distribution']})"
                 + (" (smoke run)" if report["smoke"] else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)
