#!/usr/bin/env bash
# Creates the virtualenv that runs LiteLLM's proxy server for `python -m bench.vs_litellm`, apart from the
# gateway's .venv: `litellm[proxy]` pins fastapi, uvicorn and friends that may clash with ours.
# Idempotent: a venv that already holds the pinned proxy is left alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MOE_LITELLM_PROXY_VENV:-$ROOT/.venv-litellm-proxy}"
PY="$VENV/bin/python"
# Pinned so that runs compare like with like (the gateway calls OpenAI-compatible experts natively).
LITELLM_VERSION="1.106.2"

installed() {
  [[ -x "$VENV/bin/litellm" ]] || return 1
  "$PY" - "$LITELLM_VERSION" <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version

try:
    ok = version("litellm") == sys.argv[1] and version("litellm-proxy-extras") is not None
except PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
PYEOF
}

if installed; then
  echo "LiteLLM proxy venv ready: $VENV"
  exit 0
fi

[[ -x "$PY" ]] || python3 -m venv "$VENV"
"$PY" -m pip install -q "litellm[proxy]==$LITELLM_VERSION"

installed || { echo "LiteLLM proxy venv check failed: $VENV" >&2; exit 1; }
echo "LiteLLM proxy venv ready: $VENV"
