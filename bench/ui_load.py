"""The dashboard at scale: its API calls and its page load with 1,000,000 decisions in PostgreSQL.

One run, on a fresh PostgreSQL database made for it and dropped after it:

1. The decision log is filled as bench/log_scale.py fills it (its synthetic month of traffic: three virtual models,
   ranked experts, one expert call or two after a fallback, 2% errors, five tenants; gateway/decisions/log.py's
   writer, COPY per batch), with feedback on 7% of the answered decisions; a tenth of the last day's decisions of
   the served router get a shadow version's decision (9 in 10 agreeing); then the tables are analysed as
   autovacuum would.
2. The router is registered as the version the records name (active) beside a shadow version, and the scripted
   upstream and a gateway (`moe serve`, one worker) start on that database, with an admin key and a tenant's key
   made for the run: the router versions' view and the live operating point read real rows.
3. Each /ui/api call the page makes on load, and a few it makes later, is timed over `--repeats` requests (p50,
   p95): the first page of decisions, a filtered page, the page 100 pages deep (reached by following cursors), a
   tenant's own first page, a decision's detail, the experts over 60 minutes, feedback over 24 hours. PostgreSQL's
   EXPLAIN ANALYZE of the pages' queries shows the indexes they walk.
4. With the page there (gateway/ui/static/), headless Chromium (Debian's, through Playwright) loads
   /ui#/decisions `--loads` times, each in a fresh browser context with the admin key in sessionStorage, timed
   from navigation start until `#view-decisions` is marked data-loaded="true" (its table rendered).
   The target: under 1 s.

    python -m bench.ui_load                   # 1,000,000 decisions -> bench/results/ui_load.json
    python -m bench.ui_load --quick           # 20,000 decisions, fewer repeats -> var/bench/ui_load.quick.json
    python -m bench.ui_load --rows 200000     # another size
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import Engine, event, text

from bench.harness import (
    DEFAULT_ROUTER,
    ROOT,
    Processes,
    command_line,
    console,
    gateway_config,
    machine,
    questions,
    start_gateway,
    start_upstream,
    stop_on_sigterm,
)
from bench.log_scale import SPAN, Traffic, WriterRun, seed_feedback, throughput, write_all
from bench.soak import DEFAULT_POSTGRES, fresh_database
from gateway.decisions.log import DecisionLog, make_engine
from gateway.keys.store import KeyStore, NewKey
from gateway.migrate import upgrade
from gateway.ui.queries import Cursor, DecisionFilter, DecisionQueries
from gateway.ui.stats import WindowStats
from migrations.router_versions import RouterVersions

CHROMIUM = Path("/usr/bin/chromium")
APP_JS = ROOT / "gateway/ui/static/app.js"
PAGE_LOAD_TARGET_MS = 1000.0
DEEP_PAGES = 100
PAGE = 50  # decisions per page, as the page asks for them
FILTER = {"expert": "humanities", "status": "error"}  # a rare combination: about 0.7% of the decisions
TENANT = "tenant-3"  # one of the synthetic traffic's five tenants
SHADOW_VERSION = "bench-shadow"
SHADOW_SHARE = 0.1  # of the last day's decisions of the served router


def percentiles(values_ms: list[float]) -> dict[str, Any]:
    """p50 and p95 (numpy's linear interpolation) of every sample, with their count and the slowest."""
    values = np.asarray(values_ms, dtype=float)
    p50, p95 = np.percentile(values, [50, 95])
    return {
        "samples": int(values.size),
        "p50_ms": round(float(p50), 2),
        "p95_ms": round(float(p95), 2),
        "max_ms": round(float(values.max()), 2),
    }


def fill(database_url: str, rows: int, workdir: Path, router: str) -> tuple[dict[str, Any], Traffic]:
    """`rows` decisions of log_scale's synthetic month (ending now) through the decision log's writer, as fast as it
    writes them; then their feedback, a shadow version's decisions beside `router`'s over the last day, and the
    statistics autovacuum would gather."""
    traffic = Traffic(rows, questions(2000), datetime.now(UTC) - SPAN)
    run = WriterRun()
    log = DecisionLog(make_engine(database_url), workdir / "spill", max_buffer=100_000)
    asyncio.run(write_all(log, traffic, 0.0, run))
    engine = make_engine(database_url)
    try:
        seed_feedback(engine, traffic.feedback)
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE decisions SET shadow_version = :shadow, shadow_expert = chosen_expert, "
                    "shadow_agrees = random() < 0.9 WHERE created_at >= now() - interval '1 day' AND router = :router "
                    "AND random() < :share"
                ),
                {"shadow": f"{router}@{SHADOW_VERSION}", "router": router, "share": SHADOW_SHARE},
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE decisions, expert_calls, feedback"))
    finally:
        engine.dispose()
    written = throughput(run, rows)
    return {
        "records": rows,
        "seconds": written["seconds"],
        "records_per_s": written["records_per_s"],
        "feedback": len(traffic.feedback),
        "spilled_files": run.spilled_files,
        "dead_letters": run.dead_letters,
    }, traffic


def register_versions(database_url: str, artifact: Path, version: str, workdir: Path) -> Path:
    """The trained router as `version` (the one the records name), registered active beside a shadow version; the
    artifact directory to configure the gateway with."""
    versions = RouterVersions(make_engine(database_url))
    try:
        served = None
        for name, status in ((version, "active"), (SHADOW_VERSION, "shadow")):
            directory = workdir / "routers" / name
            shutil.copytree(artifact, directory)
            manifest = json.loads((directory / "router.json").read_text())
            (directory / "router.json").write_text(json.dumps({**manifest, "version": name}))
            versions.register("embedding", directory, status=status)
            served = served or directory
    finally:
        versions.engine.dispose()
    assert served is not None
    return served


def make_keys(database_url: str) -> tuple[str, str]:
    engine = make_engine(database_url)
    try:
        store = KeyStore(engine)
        admin = store.create(NewKey(name="ui-load-admin", tenant="ops", admin=True)).key
        tenant = store.create(NewKey(name="ui-load-tenant", tenant=TENANT)).key
    finally:
        engine.dispose()
    return admin, tenant


class Api:
    """The dashboard API of a running gateway, timed request by request on one kept-alive connection."""

    def __init__(self, base: str) -> None:
        self.client = httpx.Client(base_url=f"{base}/ui/api", timeout=60)

    def get(self, path: str, key: str, **params: Any) -> tuple[float, dict[str, Any]]:
        started = time.perf_counter()
        response = self.client.get(path, params=params, headers={"authorization": f"Bearer {key}"})
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} {params}: {response.status_code} {response.text[:500]}")
        return elapsed, response.json()

    def time(self, path: str, key: str, repeats: int, **params: Any) -> dict[str, Any]:
        self.get(path, key, **params)  # unmeasured: the first request warms the connection and the caches
        return {
            "path": path,
            "params": params,
            **percentiles([self.get(path, key, **params)[0] for _ in range(repeats)]),
        }

    def cursor_deep(self, key: str, pages: int) -> str:
        """The cursor of page `pages`, reached as the page's "older" button does, one page after another."""
        cursor = None
        for _ in range(pages - 1):
            _, page = self.get("/decisions", key, limit=PAGE, **({"cursor": cursor} if cursor else {}))
            cursor = page["next_cursor"]
            if cursor is None:
                raise RuntimeError(f"fewer than {pages} pages of {PAGE} decisions: fill more rows")
        assert cursor is not None
        return cursor


def time_api(api: Api, admin: str, tenant: str, traffic: Traffic, repeats: int) -> tuple[dict[str, Any], str]:
    deep = api.cursor_deep(admin, DEEP_PAGES)
    detail = traffic.feedback[len(traffic.feedback) // 2][0]  # a decision with feedback, mid-month
    calls = {
        "me": api.time("/me", admin, repeats),
        "decisions_first_page": api.time("/decisions", admin, repeats, limit=PAGE),
        "decisions_filtered": api.time("/decisions", admin, repeats, limit=PAGE, **FILTER),
        f"decisions_{DEEP_PAGES}_pages_deep": api.time("/decisions", admin, repeats, limit=PAGE, cursor=deep),
        "decisions_tenant_key_first_page": api.time("/decisions", tenant, repeats, limit=PAGE),
        "decision_detail": api.time(f"/decisions/{detail}", admin, repeats),
        "experts_60_min": api.time("/experts", admin, repeats, window_minutes=60),
        "feedback_24_h": api.time("/feedback", admin, repeats, bucket_minutes=60, window_hours=24),
        "routers": api.time("/routers", admin, repeats),
        "evaluation": api.time("/evaluation", admin, repeats),
    }
    return calls, deep


def plans(engine: Engine, deep: str, router: str, version: str) -> dict[str, list[dict[str, Any]]]:
    """EXPLAIN ANALYZE of every statement the dashboard's reads run (gateway/ui/queries.py, stats.py), as they run
    them: the indexes walked and the time, per statement."""
    queries, stats = DecisionQueries(engine), WindowStats(engine)
    now = datetime.now(UTC)
    reads: dict[str, Callable[[], Any]] = {
        "first_page": lambda: queries.page(DecisionFilter(), PAGE, None),
        "filtered": lambda: queries.page(DecisionFilter(**FILTER), PAGE, None),
        f"{DEEP_PAGES}_pages_deep": lambda: queries.page(DecisionFilter(), PAGE, Cursor.decode(deep)),
        "tenant_first_page": lambda: queries.page(DecisionFilter(scope=TENANT), PAGE, None),
        "experts_60_min": lambda: stats.experts(now - timedelta(minutes=60), 120),
        "shadow_agreement_24_h": lambda: stats.shadow_agreement(now - timedelta(days=1)),
        "live_point_24_h": lambda: stats.live(router, version, now - timedelta(days=1)),
    }
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        statements.append((statement, parameters))

    found: dict[str, list[dict[str, Any]]] = {}
    for name, read in reads.items():
        statements.clear()
        event.listen(engine, "before_cursor_execute", capture)
        try:
            read()
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        found[name] = []
        for statement, parameters in list(statements):
            with engine.connect() as conn:
                plan = [row[0] for row in conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters)]
            joined = "\n".join(plan)
            used = re.findall(r"(?:Index (?:Only )?Scan(?: Backward)? using|Bitmap Index Scan on) (\w+)", joined)
            execution = re.search(r"Execution Time: ([\d.]+) ms", joined)
            found[name].append(
                {
                    "statement": " ".join(statement.split())[:200],
                    "indexes_used": sorted(set(used)),
                    "execution_ms": float(execution.group(1)) if execution else None,
                    "plan": plan,
                }
            )
    return found


def page_loads(base: str, key: str, loads: int) -> dict[str, Any]:
    """/ui#/decisions in headless Chromium, each load in a fresh context (nothing cached): ms from navigation start
    until the decisions view is marked loaded, read from the page's own clock."""
    if not (APP_JS.is_file() and CHROMIUM.is_file()):
        return {"skipped": f"needs the page ({APP_JS.relative_to(ROOT)}) and {CHROMIUM}"}
    from playwright.sync_api import sync_playwright

    storage_key = re.search(r'const KEY = "([^"]+)"', APP_JS.read_text())
    if storage_key is None:
        return {"skipped": f"no sessionStorage key name found in {APP_JS.relative_to(ROOT)}"}
    # Before any script of the page runs: the key as the login form stores it, and a watch for the view's mark.
    init = f"""
        sessionStorage.setItem({json.dumps(storage_key.group(1))}, {json.dumps(key)});
        new MutationObserver((_, observer) => {{
            const view = document.querySelector('#view-decisions[data-loaded="true"]');
            if (view && window.__loadedAt === undefined) {{ window.__loadedAt = performance.now(); observer.disconnect(); }}
        }}).observe(document, {{subtree: true, childList: true, attributes: true, attributeFilter: ["data-loaded"]}});
    """
    timings, rows = [], 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            for attempt in range(loads + 1):  # the first, unmeasured, starts the browser's own processes
                context = browser.new_context(viewport={"width": 1280, "height": 800})
                context.add_init_script(init)
                page = context.new_page()
                page.goto(f"{base}/ui#/decisions")
                page.wait_for_selector('#view-decisions[data-loaded="true"]', timeout=30_000)
                loaded_at = page.evaluate("window.__loadedAt")
                rows = page.locator("#view-decisions [data-decision-id]").count()
                context.close()
                if attempt:
                    timings.append(float(loaded_at))
        finally:
            browser.close()
    return {
        "url": "/ui#/decisions",
        "until": '#view-decisions[data-loaded="true"]',
        "rows_shown": rows,
        "loads_ms": [round(t, 1) for t in timings],
        **percentiles(timings),
        "target_ms": PAGE_LOAD_TARGET_MS,
        "met": float(np.percentile(timings, 95)) < PAGE_LOAD_TARGET_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, help="decisions in the log (default 1,000,000; 20,000 with --quick)")
    parser.add_argument("--repeats", type=int, help="timed requests per API call (default 30; 10 with --quick)")
    parser.add_argument("--loads", type=int, help="timed page loads (default 10; 3 with --quick)")
    parser.add_argument("--router", type=Path, default=DEFAULT_ROUTER, help="trained router artifact to serve")
    parser.add_argument(
        "--postgres",
        default=DEFAULT_POSTGRES,
        help="a PostgreSQL server URL whose user may create databases (default: $MOE_TEST_POSTGRES_URL "
        "or the local server)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run, written under var/bench/")
    parser.add_argument(
        "--out",
        type=Path,
        help="report JSON; default bench/results/ui_load.json, or var/bench/ui_load.quick.json with --quick",
    )
    args = parser.parse_args()
    rows = args.rows or (20_000 if args.quick else 1_000_000)
    repeats = args.repeats or (10 if args.quick else 30)
    loads = args.loads or (3 if args.quick else 10)
    out: Path = args.out or ROOT / ("var/bench/ui_load.quick.json" if args.quick else "bench/results/ui_load.json")
    stop_on_sigterm()

    work = Path(tempfile.mkdtemp(prefix="moe-ui-load-"))
    with fresh_database(args.postgres, "moe_ui_load") as database_url, Processes(work) as procs:
        upgrade(database_url)
        console.print(f"filling the decision log with {rows:,} decisions")
        router = json.loads((args.router / "router.json").read_text())["name"]
        filled, traffic = fill(database_url, rows, work, router)
        console.print(f"filled: {filled}")
        served = register_versions(database_url, args.router, traffic.pool[0].router_version or "", work)
        admin, tenant = make_keys(database_url)
        gateway = start_gateway(procs, gateway_config(start_upstream(procs), served), database_url)
        api = Api(gateway)
        calls, deep = time_api(api, admin, tenant, traffic, repeats)
        for name, timed in calls.items():
            console.print(f"{name:<34} p50 {timed['p50_ms']:>8.2f} ms  p95 {timed['p95_ms']:>8.2f} ms")
        load = page_loads(gateway, admin, loads)
        console.print(f"page load: {json.dumps({k: v for k, v in load.items() if k != 'loads_ms'})}", markup=False)
        engine = make_engine(database_url)
        try:
            explained = plans(engine, deep, router, traffic.pool[0].router_version or "")
            with engine.connect() as conn:
                stored = {
                    name: conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one()
                    for name in ("decisions", "expert_calls", "feedback")
                }
                stored["database_size"] = conn.execute(
                    text("SELECT pg_size_pretty(pg_database_size(current_database()))")
                ).scalar_one()
        finally:
            engine.dispose()

    report = {
        "command": command_line(),
        "quick": args.quick,
        "machine": machine(),
        "note": "one machine: PostgreSQL, the gateway, the upstream, this client and Chromium share its cores",
        "settings": {
            "database": "a fresh PostgreSQL database on the local server, dropped after the run",
            "decisions": f"bench/log_scale.py's synthetic traffic over the {SPAN.days} days before the run "
            "(5 tenants, 3 experts, 2% errors, 5% with a fallback call), written by the decision log",
            "gateway": "moe serve, 1 worker",
            "repeats": repeats,
            "page": PAGE,
            "filter": FILTER,
            "tenant": TENANT,
            "browser": f"{CHROMIUM} headless through Playwright, a fresh context per load, 1280x800",
        },
        "fill": filled,
        "stored": stored,
        "api": calls,
        "page_load": load,
        "plans": explained,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, explained_read in explained.items():
        for plan in explained_read:
            console.print(f"plan {name}: {plan['execution_ms']} ms, indexes {plan['indexes_used']}")
    console.print(f"written to {out}")


if __name__ == "__main__":
    main()
