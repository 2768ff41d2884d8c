"""Cost-quality plots of an offline evaluation (training/evaluate.py's reports): one panel per scenario with every
candidate's frontier, the single experts, the best single and the oracle."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def draw_singles(ax: Any, singles: dict[str, dict[str, float]], best: dict[str, Any]) -> None:
    """Each single expert as a grey point, the best one as a black square: every cost-quality plot's reference."""
    for name, single in singles.items():
        ax.scatter(single["cost"], single["accuracy"], color="grey", s=25, zorder=3)
        ax.annotate(name, (single["cost"], single["accuracy"]), fontsize=7, color="grey",
                    xytext=(3, -9), textcoords="offset points")
    ax.scatter(best["cost"], best["accuracy"], color="black", marker="s", s=60, zorder=4,
               label=f"best single ({best['name']})")


def plot(scenarios: dict[str, dict[str, Any]], path: Path) -> None:
    """One cost-quality panel per scenario: every candidate's frontier, single experts, best single, oracle.
    A second row shows the curves again as they are when the policy sees each answer's recorded cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (
        ("", lambda r: r),
        (", policy sees recorded costs (pool README's protocol)", lambda r: r.get("recorded_cost")),
    )
    fig, axes = plt.subplots(2, len(scenarios), figsize=(9.5 * len(scenarios), 11), squeeze=False)
    for row, (suffix, curve_of) in zip(axes, rows, strict=True):
        for ax, (title, report) in zip(row, scenarios.items(), strict=True):
            draw_panel(ax, report, curve_of)
            ax.set_title(f"{title} ({report['n']} queries){suffix}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    plt.close(fig)


def draw_panel(ax: Any, report: dict[str, Any], curve_of: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
    """One scenario's panel; `curve_of` picks which of a candidate's curves to draw (None: leave it out)."""
    draw_singles(ax, report["singles"], report["best_single"])
    best = report["best_single"]
    ax.axhline(best["accuracy"], color="black", lw=0.6, ls=":")
    oracle = report["oracle"]
    ax.scatter(oracle["cost"], oracle["accuracy"], color="gold", edgecolor="black", marker="*", s=180, zorder=4,
               label="oracle")
    for result in report["candidates"]:
        curve = curve_of(result)
        if curve is None or result["name"].startswith("single:") or result["name"] == "oracle":
            continue
        points = curve["frontier"]
        costs, accuracies = [p["cost"] for p in points], [p["accuracy"] for p in points]
        style = {"ls": "--"} if result["kind"] == "reference" else {"lw": 2 if result["kind"] == "router" else 1.2}
        if len(points) == 1:
            ax.scatter(costs, accuracies, marker="D", s=40, zorder=4, label=result["name"])
        else:
            ax.plot(costs, accuracies, marker=".", ms=4, label=result["name"], **style)
    ax.set_xlabel("cost, USD per 1k queries")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never over a point
