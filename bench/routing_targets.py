"""What the routing benchmark holds every dataset to (issue 18), read off training/evaluate.py's scenario reports.

- `beats_baselines`: the default router's AUC and its accuracy at half the best single expert's cost are at least
  every plain baseline's (logistic, kNN, routing by the true label where the data has labels); beside each, the
  paired bootstrap's 95% interval of the router's lead (training/bootstrap.py), which the check does not read.
- `budgets`: for each (accuracy share, cost share), some candidate that routes (a router or the agreement cascade,
  not a reference) has a measured setting reaching that share of the best single expert's accuracy within that
  share of its cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PLAIN_BASELINES = ("logistic", "knn", "true-label")


def is_plain(name: str) -> bool:
    return any(name == b or name.startswith(f"{b}-") for b in PLAIN_BASELINES)


def beats_baselines(report: dict[str, Any], default: str) -> dict[str, Any]:
    by_name = {r["name"]: r for r in report["candidates"]}
    router = by_name.get(default)
    if router is None:
        return {"router": default, "met": False, "note": "no artifact of the default router"}
    checks = {}
    for baseline in (r for r in report["candidates"] if is_plain(r["name"])):
        paired = baseline.get("paired", {})
        checks[baseline["name"]] = {
            metric: {
                "router": router[metric],
                "baseline": baseline[metric],
                "met": router[metric] is not None and (baseline[metric] is None or router[metric] >= baseline[metric]),
                # the router's lead, resample by resample (training/bootstrap.py): how much is the split's luck
                **({"lead_interval_95": paired[metric]["interval"]} if paired.get(metric) else {}),
            }
            for metric in ("auc", "accuracy_at_half_cost")
        }
    met = bool(checks) and all(c["met"] for per in checks.values() for c in per.values())
    return {"router": default, "against": checks, "met": met}


def within_budget(report: dict[str, Any], accuracy_share: float, cost_share: float) -> dict[str, Any]:
    best = report["best_single"]
    accuracy, budget = accuracy_share * best["accuracy"], cost_share * best["cost"]
    reaching = [
        (p["cost"], p["accuracy"], r["name"])
        for r in report["candidates"]
        if r["kind"] != "reference" and not r["name"].startswith("single:")
        for p in r["points"]
        if p["accuracy"] >= accuracy
    ]
    cheapest = min(reaching, default=None)
    return {
        "accuracy": accuracy,
        "budget_per_1k": budget,
        "cheapest": cheapest
        and {
            "candidate": cheapest[2],
            "cost": cheapest[0],
            "accuracy": cheapest[1],
            "cost_share": cheapest[0] / best["cost"],
        },
        "met": bool(cheapest and cheapest[0] <= budget),
    }


def check_targets(report: dict[str, Any], default: str, budgets: Sequence[tuple[float, float]]) -> dict[str, Any]:
    return {
        "beats_baselines": beats_baselines(report, default),
        **{f"{a:.0%}_of_best_within_{c:.0%}_of_its_cost": within_budget(report, a, c) for a, c in budgets},
    }


def cross_dataset_table(reports: dict[str, dict[str, Any]], default: str) -> list[dict[str, Any]]:
    """One row per dataset scenario: the default router, the best plain baseline, the cascade, the best single."""
    rows = []
    for key, report in reports.items():
        by_name = {r["name"]: r for r in report["candidates"]}
        router = by_name.get(default, {})
        plain = [r for r in report["candidates"] if is_plain(r["name"]) and r["auc"] is not None]
        baseline = max(plain, key=lambda r: r["auc"], default={})
        best = report["best_single"]
        cheapest_95 = within_budget(report, 0.95, 1.0)["cheapest"]
        rows.append(
            {
                "scenario": key,
                "queries": report["n"],
                "experts": len(report["experts"]),
                "best_single": best["name"],
                "router_auc": router.get("auc"),
                "best_baseline": baseline.get("name"),
                "baseline_auc": baseline.get("auc"),
                "router_accuracy_at_half_cost": router.get("accuracy_at_half_cost"),
                "baseline_accuracy_at_half_cost": baseline.get("accuracy_at_half_cost"),
                "cheapest_to_95_percent": cheapest_95,
            }
        )
    return rows
