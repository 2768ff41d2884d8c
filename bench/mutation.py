"""Mutation testing of the parts whose tests run without servers: `make mutation` -> bench/results/mutation.{json,md}.

mutmut 3 (configured under [tool.mutmut] in pyproject.toml) copies the packages into mutants/, rewrites
each function in scope into its mutants, and for each mutant runs the tests that call that function
(found by a first, clean run), stopping at the first failure. The tests are the pure ones
(tests/gateway/unit and the pure room tests named in the config), run with `--noconftest`: no gateway app,
database server or Redis. Nothing in the working tree is changed; mutants/ is a scratch folder.

The scope is SCOPE below: the functions, not whole files, because the same files hold code whose tests
need servers (the key store, the Redis breakers, the decision log's writer task). A mutant in scope
counts as
- killed: a test failed (or the mutant made a test run past its time limit: "timeout", reported apart);
- survived: every selected test passed; then it is either listed in EQUIVALENT with the reason no test
  can tell it from the original (checked against its diff, so a stale entry counts as a survivor) or
  it is a gap in the tests;
- no tests: no selected test calls the function (a survivor too).
score = (killed + timeout) / (mutants - equivalent).

Usage (from the repo root): `make mutation`, or `python -m bench.mutation [--max-children N]`;
`--report-only` rewrites the report from the last run's mutants/ without running anything.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
COMMAND = "make mutation"

# module -> functions, Class.method or Class (every method) in scope.
SCOPE: dict[str, list[str]] = {
    "routers.policy": ["CostPolicy", "_per_1k", "expected_cost", "parse_knob", "lambda_grid", "calibrate"],
    "routers.cost": ["CostModel", "_inputs"],
    "experts.aggregate": ["extract_choice", "log_odds_weight", "weighted_vote", "expert_weights", "pick_answer",
                          "answers_needed", "selection_features", "synthesis_messages"],
    "experts.client": ["ExpertFailure", "status_failure", "classify", "with_system_prompt"],
    "gateway.keys.rate_limit": ["RateLimiter"],
    "gateway.keys.store": ["hash_key"],
    "gateway.errors": ["error_body", "error_response"],
    "gateway.middleware": ["BodyLimit"],
    "gateway.chat.protocol": ["ChatCompletionRequest.upstream_params", "ChatCompletionRequest.wire_messages"],
    "experts.breaker": ["LocalBreakers"],
    "gateway.decisions.record": ["DecisionRecord", "_iso"],
    "gateway.decisions.log": ["DecisionLog._write", "DecisionLog._set_aside", "DecisionLog._spill",
                              "DecisionLog._spill_overflow", "DecisionLog.spilled_files", "DecisionLog._replay_spilled"],
    "training.evaluate": ["Setting", "columns_for", "sweep", "frontier", "envelope", "_cross", "accuracy_at", "cost_at",
                          "area_under", "curve_metrics", "overall_frontier"],
}

# Survivors no test can kill: mutant -> (the mutated line, as mutmut shows it after "+", and why no input tells
# it from the original). Checked against the mutant's diff on every report: an entry whose line no longer
# matches (the code changed, mutants were renumbered) counts as a survivor until it is reviewed again.
_ZIP = ("one of three zips over the same two sequences: the first loop's always runs first, so whichever one is "
        "not strict, a length mismatch still raises the same ValueError")
_DTYPE = "the values are numbers in every call; numpy gives the same results (it promotes to float64 where it computes)"
EQUIVALENT: dict[str, tuple[str, str]] = {
    "experts.aggregate.x_extract_choice__mutmut_9": (
        "if match is None or LETTERS.rindex(match.group(1)) >= n_options:",
        "LETTERS holds each letter once, so rindex equals index"),
    "experts.aggregate.x_selection_features__mutmut_5": ("for expert, choice in zip(experts, choices, strict=None):", _ZIP),
    "experts.aggregate.x_selection_features__mutmut_8": ("for expert, choice in zip(experts, choices, ):", _ZIP),
    "experts.aggregate.x_selection_features__mutmut_9": ("for expert, choice in zip(experts, choices, strict=False):", _ZIP),
    "experts.aggregate.x_selection_features__mutmut_21": (
        "for position, (expert, choice) in enumerate(zip(experts, choices, strict=None)):", _ZIP),
    "experts.aggregate.x_selection_features__mutmut_24": (
        "for position, (expert, choice) in enumerate(zip(experts, choices, )):", _ZIP),
    "experts.aggregate.x_selection_features__mutmut_25": (
        "for position, (expert, choice) in enumerate(zip(experts, choices, strict=False)):", _ZIP),
    "experts.aggregate.x_selection_features__mutmut_31": (
        "others = [(e, c) for e, c in zip(experts, choices, strict=None) if e != expert]", _ZIP),
    "experts.aggregate.x_selection_features__mutmut_34": (
        "others = [(e, c) for e, c in zip(experts, choices, ) if e != expert]", _ZIP),
    "experts.aggregate.x_selection_features__mutmut_35": (
        "others = [(e, c) for e, c in zip(experts, choices, strict=False) if e != expert]", _ZIP),
    "experts.aggregate.x_weighted_vote__mutmut_15": (
        "totals[choice] = totals.get(choice, 1.0) + weight",
        "every letter named gets the same extra 1 once: the order of the totals, ties included, and so the winner "
        "(the only output) do not change"),
    "gateway.decisions.log.xǁDecisionLogǁ_replay_spilled__mutmut_18": (
        "for start in range(0, len(records), ):",
        "a spill file written one record per insert instead of BATCH per insert: the same rows, only slower"),
    "gateway.decisions.log.xǁDecisionLogǁ_spill__mutmut_9": (
        'name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{os.getpid()}-{uuid.uuid4().hex[:9]}.jsonl"',
        "one more random hex digit in a file name that is already unique and still sorts by time"),
    "gateway.decisions.log.xǁDecisionLogǁ_spill__mutmut_13": (
        'tmp = self.spill_dir / (name + "XX.tmpXX")',
        "the temporary file's name: it is renamed once written, and no spelling of it matches *.jsonl"),
    "gateway.decisions.log.xǁDecisionLogǁ_spill__mutmut_14": (
        'tmp = self.spill_dir / (name + ".TMP")',
        "the temporary file's name: it is renamed once written, and no spelling of it matches *.jsonl"),
    "gateway.decisions.log.xǁDecisionLogǁspilled_files__mutmut_2": (
        'return sorted(self.spill_dir.glob("*.jsonl")) if (self.spill_dir.is_dir()) or True else []',
        "globbing a folder that does not exist yields nothing, as the guard does"),
    "gateway.middleware.xǁBodyLimitǁ__call____mutmut_27": ("too_large = None", "only ever tested for truth: None is as false"),
    "gateway.middleware.xǁBodyLimitǁ__call____mutmut_29": ("started = None", "only ever tested for truth: None is as false"),
    "gateway.keys.rate_limit.xǁRateLimiterǁadd_tokens__mutmut_3": (
        "number = int(time.time() / self.window_s)",
        "for a positive time int() truncates toward zero, which is what // does: the same window number"),
    "gateway.keys.rate_limit.xǁRateLimiterǁadmit__mutmut_7": (
        "number = int(now / self.window_s)",
        "for a positive time int() truncates toward zero, which is what // does: the same window number"),
    "routers.cost.x__inputs__mutmut_4": (
        "lengths = np.log1p(np.array([len(text) for text in texts], dtype=None))[:, None]",
        "the log length in float64 instead of float32: the model's inputs and outputs change only below float32 "
        "precision (the tests compare predictions fitted and served by the same code)"),
    "routers.cost.x__inputs__mutmut_6": (
        "lengths = np.log1p(np.array([len(text) for text in texts], ))[:, None]",
        "the log length in float64 instead of float32: the model's inputs and outputs change only below float32 "
        "precision (the tests compare predictions fitted and served by the same code)"),
    "routers.cost.xǁCostModelǁ__call____mutmut_1": (
        "return np.exp(_inputs(self.lexicon, texts) @ self.coef + self.intercept).astype(None)",
        "astype(None) is astype(float64)"),
    "routers.cost.xǁCostModelǁload__mutmut_4": (
        "with np.load(directory / COST_FILE, allow_pickle=None) as data:", "allow_pickle defaults to False; None is as false"),
    "routers.cost.xǁCostModelǁload__mutmut_6": (
        "with np.load(directory / COST_FILE, ) as data:", "allow_pickle defaults to False"),
    "routers.policy.x__per_1k__mutmut_4": (
        "cost = np.asarray(expected_cost, dtype=None) * QUERIES_PER_COST_UNIT", _DTYPE),
    "routers.policy.x__per_1k__mutmut_6": ("cost = np.asarray(expected_cost, ) * QUERIES_PER_COST_UNIT", _DTYPE),
    "routers.policy.x_calibrate__mutmut_6": (
        "cost = dev.mean_cost() if expected_cost is None else np.asarray(expected_cost, dtype=None)", _DTYPE),
    "routers.policy.x_calibrate__mutmut_8": (
        "cost = dev.mean_cost() if expected_cost is None else np.asarray(expected_cost, )", _DTYPE),
    "routers.policy.x_expected_cost__mutmut_14": (
        "by_name = dict(zip(manifest.experts, measured, strict=None)) if manifest else {}",
        "strict defaults to False; None is as false"),
    "routers.policy.x_expected_cost__mutmut_17": (
        "by_name = dict(zip(manifest.experts, measured, )) if manifest else {}", "strict defaults to False"),
    "routers.policy.x_lambda_grid__mutmut_67": (
        "beyond = 3 * crossings[-1] if crossings[-1] > 0 else 1.0",
        "any lam past the largest crossing makes the same choices (every query to its cheapest expert)"),
    "routers.policy.x_lambda_grid__mutmut_74": (
        "beyond = 2 * crossings[-1] if crossings[-1] > 0 else 2.0",
        "with every crossing at 0 (ties in quality only) any lam > 0 makes the same choices"),
    "routers.policy.xǁCostPolicyǁchoose__mutmut_4": (
        "quality = np.atleast_2d(np.asarray(quality, dtype=None))", _DTYPE + " (booleans and integers are tested)"),
    "routers.policy.xǁCostPolicyǁchoose__mutmut_6": (
        "quality = np.atleast_2d(np.asarray(quality, ))", _DTYPE + " (booleans and integers are tested)"),
    "routers.policy.xǁCostPolicyǁrank__mutmut_20": (
        'return np.argsort(-(quality - self.lam * cost), kind="STABLE")', "numpy reads the sort kind case-insensitively"),
    "routers.policy.xǁCostPolicyǁrank__mutmut_34": (
        'by_quality = [i for i in np.argsort(-quality, kind="STABLE") if not eligible[i]]',
        "numpy reads the sort kind case-insensitively"),
    "routers.policy.xǁCostPolicyǁrank__mutmut_37": (
        "return np.array(by_cost + by_quality, dtype=None)",
        "the lists hold numpy int64 indices, so the array is int64 anyway (an empty ranking cannot happen: the "
        "margin rule takes the max of the qualities first)"),
    "routers.policy.xǁCostPolicyǁrank__mutmut_39": (
        "return np.array(by_cost + by_quality, )",
        "the lists hold numpy int64 indices, so the array is int64 anyway (an empty ranking cannot happen: the "
        "margin rule takes the max of the qualities first)"),
    "training.evaluate.x_envelope__mutmut_24": (
        "return np.array(hull, dtype=None).reshape(-1, 2)", _DTYPE + " (every reader interpolates with np.interp)"),
    "training.evaluate.x_envelope__mutmut_26": (
        "return np.array(hull, ).reshape(-1, 2)", _DTYPE + " (every reader interpolates with np.interp)"),
    "training.evaluate.x_envelope__mutmut_28": (
        "return np.array(hull, dtype=np.float64).reshape(-2, 2)", "numpy reads any negative size as the one to infer"),
}


# Survivors left alive on purpose (not equivalent, counted against the score): mutant -> why no test kills it.
NOT_WORTH_A_TEST: dict[str, str] = {
    "gateway.decisions.log.xǁDecisionLogǁ_set_aside__mutmut_7": "needs a driver error whose text holds a NUL character",
    "gateway.decisions.log.xǁDecisionLogǁ_set_aside__mutmut_8": "needs a driver error whose text holds a NUL character",
    "gateway.decisions.log.xǁDecisionLogǁ_set_aside__mutmut_9": "needs a driver error over 4,000 characters long",
    "routers.policy.x_calibrate__mutmut_32": "differs only for a dev quality exactly 1e-12 below a target",
    "training.evaluate.x_area_under__mutmut_1": "2,002 instead of 2,001 samples of the same integral: a change "
                                                "below 1e-6 in the AUC",
    "training.evaluate.x_sweep__mutmut_25": "differs only for two settings whose costs agree to 12 decimals but not 13",
    "training.evaluate.x_sweep__mutmut_31": "differs only for two settings whose accuracies agree to 12 decimals but "
                                            "not 13",
}


def globs() -> list[str]:
    patterns = []
    for module, names in SCOPE.items():
        for name in names:
            if "." in name:
                cls, method = name.split(".")
                patterns.append(f"{module}.xǁ{cls}ǁ{method}__mutmut_*")
            elif name[0].isupper():
                patterns.append(f"{module}.xǁ{name}ǁ*")
            else:
                patterns.append(f"{module}.x_{name}__mutmut_*")
    return patterns


def module_of(mutant: str) -> str:
    return mutant.split(".xǁ")[0] if ".xǁ" in mutant else mutant.split(".x_")[0]


def mutmut(*args: str, check: bool = True) -> str:
    exe = Path(sys.executable).with_name("mutmut")
    run = subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True)
    if check and run.returncode != 0:
        raise SystemExit(f"mutmut {' '.join(args[:2])} failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return run.stdout


def diff_of(mutant: str) -> list[str]:
    """The changed lines of a mutant's diff, '-' original then '+' mutated."""
    return [line for line in mutmut("show", mutant).splitlines()
            if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))]


def collect() -> dict[str, str]:
    """mutant -> status, for the mutants in scope."""
    patterns = globs()
    statuses = {}
    for line in mutmut("results", "--all", "true").splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name and any(fnmatch.fnmatch(name, p) for p in patterns):
            statuses[name] = status
    return statuses


def report(statuses: dict[str, str], wall_s: float | None, max_children: int) -> dict[str, object]:
    modules: dict[str, Counter[str]] = {}
    survivors, equivalent, stale = [], [], []
    for name, status in sorted(statuses.items()):
        counts = modules.setdefault(module_of(name), Counter())
        counts["mutants"] += 1
        if status in ("killed", "timeout"):
            counts[status] += 1
            continue
        diff = diff_of(name)
        if name in EQUIVALENT:
            line, reason = EQUIVALENT[name]
            if any(d[1:].strip() == line.strip() for d in diff if d.startswith("+")):
                counts["equivalent"] += 1
                equivalent.append({"mutant": name, "diff": diff, "reason": reason})
                continue
            stale.append(name)
        counts["no tests" if status == "no tests" else "survived"] += 1
        survivors.append({"mutant": name, "status": status, "diff": diff,
                          **({"note": NOT_WORTH_A_TEST[name]} if name in NOT_WORTH_A_TEST else {})})

    def summary(counts: Counter[str]) -> dict[str, object]:
        judged = counts["mutants"] - counts["equivalent"]
        return {
            "mutants": counts["mutants"], "killed": counts["killed"], "timeout": counts["timeout"],
            "survived": counts["survived"], "no_tests": counts["no tests"], "equivalent": counts["equivalent"],
            "score": round((counts["killed"] + counts["timeout"]) / judged, 4) if judged else None,
        }

    total: Counter[str] = sum(modules.values(), Counter())
    return {
        "tool": f"mutmut {version('mutmut')}",
        "command": COMMAND,
        "max_children": max_children,
        "wall_s": round(wall_s, 1) if wall_s is not None else None,
        "scope": SCOPE,
        "score_definition": "(killed + timeout) / (mutants - equivalent)",
        "total": summary(total),
        "modules": {module: summary(counts) for module, counts in sorted(modules.items())},
        "equivalent": equivalent,
        "survivors": survivors,
        "stale_equivalent_entries": stale,
    }


def markdown(data: dict[str, object]) -> str:
    total = data["total"]
    lines = [
        "# Mutation testing",
        "",
        f"`{data['command']}` ({data['tool']}, {data['max_children']} workers"
        + (f", {data['wall_s'] / 60:.1f} min wall" if data["wall_s"] else "") + "): "
        f"**{total['score']:.1%}** of non-equivalent mutants killed "  # type: ignore[index]
        f"({total['killed']} killed + {total['timeout']} timeout of {total['mutants']} - {total['equivalent']} equivalent).",  # type: ignore[index]
        "",
        "Scope and rules: `bench/mutation.py`. Tests: the pure ones (`tests/gateway/unit` and the pure room tests in",
        "`[tool.mutmut]` of `pyproject.toml`), without servers.",
        "",
        "| module | mutants | killed | timeout | survived | no tests | equivalent | score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for module, s in {**data["modules"], "total": total}.items():  # type: ignore[dict-item]
        lines.append(f"| {module} | {s['mutants']} | {s['killed']} | {s['timeout']} | {s['survived']} | "
                     f"{s['no_tests']} | {s['equivalent']} | {s['score']:.1%} |")
    for title, key in (("Surviving mutants", "survivors"), ("Equivalent mutants", "equivalent")):
        entries = data[key]  # type: ignore[index]
        lines += ["", f"## {title} ({len(entries)})", ""]
        for entry in entries:
            why = f": {entry['reason']}" if "reason" in entry else f" ({entry['status']}{'; ' + entry['note'] if 'note' in entry else ''})"
            lines.append(f"- `{entry['mutant']}`{why}")
            lines += [f"  `{d}`" for d in entry["diff"]]
    if data["stale_equivalent_entries"]:
        lines += ["", "Equivalent entries whose diff no longer matches (counted as survivors): "
                  + ", ".join(f"`{n}`" for n in data["stale_equivalent_entries"])]  # type: ignore[union-attr]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-children", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--report-only", action="store_true", help="report the last run, run nothing")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    # mutmut runs the tests from mutants/: point the pool-reading tests at the pool this checkout would read.
    from training.pool import default_pool_dir

    os.environ.setdefault("MOE_POOL_DIR", str(default_pool_dir()))
    wall_s = None
    if not args.report_only:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)  # a fresh run: no result cached from other code
        started = time.monotonic()
        mutmut("run", "--max-children", str(args.max_children), *globs())
        wall_s = time.monotonic() - started
    elif (RESULTS / "mutation.json").is_file():
        wall_s = json.loads((RESULTS / "mutation.json").read_text()).get("wall_s")
    statuses = collect()
    if not statuses:
        raise SystemExit("no mutmut results for the scope in mutants/: run `make mutation` (without --report-only)")
    data = report(statuses, wall_s, args.max_children)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mutation.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    (RESULTS / "mutation.md").write_text(markdown(data))
    total = data["total"]
    print(f"{total['score']:.1%} of non-equivalent mutants killed: {total}; "  # type: ignore[index]
          f"report in {RESULTS.relative_to(ROOT)}/mutation.{{json,md}}")


if __name__ == "__main__":
    main()
