"""A real vLLM CPU server (SmolLM2-135M-Instruct) for the tests marked `@pytest.mark.vllm`.

    with vllm_server(config) as api_bases:
        ...  # every server in config.servers answers at its api_base

Starting one costs ~75-150 s and ~4 GB of memory, so use it from a session-scoped fixture.
A server already answering with the expected model names (e.g. from `moe experts up` in another
terminal) is reused and left running; one started here is always stopped on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from experts import launcher
from gateway.config import DEFAULT_CONFIG, GatewayConfig, load_config


def vllm_installed() -> bool:
    return (launcher.vllm_venv() / "bin" / "python").exists()


@contextmanager
def vllm_server(
    config: GatewayConfig | None = None,
    *,
    cache_dir: Path = launcher.DEFAULT_CACHE_DIR,
    log_dir: Path = launcher.DEFAULT_LOG_DIR,
    timeout_s: float = launcher.READY_TIMEOUT_S,
) -> Iterator[list[str]]:
    """Yields the api_base of each server in `config` (the embedded default config when None)."""
    config = config or load_config(DEFAULT_CONFIG)
    if not vllm_installed():
        pytest.skip(f"no vLLM venv at {launcher.vllm_venv()} (run scripts/setup-vllm.sh)")
    with launcher.running_servers(config, cache_dir=cache_dir, log_dir=log_dir, timeout_s=timeout_s):
        yield [s.api_base for s in config.servers]
