"""Every trained router family (bert-domain, reward-distilled, skill-based) in a running gateway.

The families are the ones tests/routers/test_routers_trained.py checks on their own, trained once a session
(tests/routers/families.py).
"""

from __future__ import annotations

from pathlib import Path

from tests.routers.families import FAMILIES, MATHS, SMALL, STRONG_AT_MATHS, Artifacts


def test_each_family_routes_live_requests_in_the_gateway(pool_artifacts: Artifacts, upstream: str, sqlite_url: str,
                                                         tmp_path: Path) -> None:
    """Every family loads in a running gateway and routes real requests, with a cost knob too."""
    import openai

    from gateway.config import GatewayConfig
    from tests.gateway.support import decisions, running_gateway, wait_for

    prices = {"Meta-Llama-3_1-8B-Instruct": 0.18, "mathstral-7B": 0.20, "Phi-3-mini-4k-instruct": 0.10}
    config = GatewayConfig.model_validate({
        "experts": [{"name": n, "model": f"echo-{n}", "api_base": f"{upstream}/v1", "price_per_mtok": prices[n]}
                    for n in SMALL],
        "routers": [{"name": f, "artifact": str(pool_artifacts[f])} for f in FAMILIES],
        "virtual_models": [{"name": f"moe-{f}", "router": f} for f in FAMILIES],
    })
    with running_gateway(config, sqlite_url, tmp_path) as gw:
        client = openai.OpenAI(base_url=gw.v1, api_key="unused", max_retries=0)
        for family in FAMILIES:
            raw = client.chat.completions.with_raw_response.create(
                model=f"moe-{family}", messages=[{"role": "user", "content": MATHS}]
            )
            assert raw.headers["x-moe-router"].startswith(f"{family}@")
            assert raw.headers["x-moe-expert"] in STRONG_AT_MATHS
            assert raw.parse().choices[0].message.content == f"[echo-{raw.headers['x-moe-expert']}] {MATHS}"
            thrifty = client.chat.completions.with_raw_response.create(
                model=f"moe-{family}:100000", messages=[{"role": "user", "content": MATHS}]
            )
            assert thrifty.headers["x-moe-expert"] == "Phi-3-mini-4k-instruct"  # the cheapest, whatever its quality
    wait_for(lambda: len(decisions(sqlite_url)) == 2 * len(FAMILIES), what="every record")
    rows = decisions(sqlite_url)
    assert {r.router for r in rows} == set(FAMILIES)
    skill = [r for r in rows if r.router == "skill-based"]
    assert all(r.recruited for r in skill)
