"""`moe serve` starts with garbage collection off (gateway/cli.py); the app's start-up must turn it back on, or a
serving process would never collect the reference cycles its requests leave."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from tests.gateway.support import routed_config, running_gateway


def test_startup_turns_garbage_collection_back_on(
    healthy_experts: list[dict[str, Any]], router_artifact: Path, sqlite_url: str, tmp_path: Path
) -> None:
    gc.disable()
    try:
        with running_gateway(routed_config(healthy_experts, router_artifact), sqlite_url, tmp_path):
            assert gc.isenabled()
    finally:
        gc.enable()
