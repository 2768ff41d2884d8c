"""Rendering the Helm chart in tests: helm-python renders it offline (no cluster, no helm binary)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "moe-gateway"
OVERLAYS = sorted((CHART / "ci").glob("*.yaml"))
RELEASE, NAMESPACE = "moe", "llm"


def overlay(path: Path | None) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) if path else {}


def _rendered(values: dict[str, Any]) -> dict[str, str]:
    return helm.Chart.load(CHART).render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every manifest the chart renders for `values` (hooks included), as parsed YAML documents."""
    return [doc for path, text in sorted(_rendered(values).items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def notes(values: dict[str, Any]) -> str:
    """What `helm install` prints after installing with `values` (NOTES.txt)."""
    return next(text for path, text in _rendered(values).items() if path.endswith("/NOTES.txt"))


def find(docs: list[dict[str, Any]], kind: str, component: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind
            and (component is None or d["metadata"]["labels"].get("app.kubernetes.io/component") == component)]


def one(docs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = find(docs, kind, component)
    assert len(found) == 1, f"expected one {kind} ({component}), got {len(found)}"
    return found[0]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The pod template's spec of a Deployment, Job or CronJob."""
    spec = doc["spec"]
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]
