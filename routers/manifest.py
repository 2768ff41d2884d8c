"""What a trained router artifact records (router.json) and what it may know of the experts it routes between."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST = "router.json"


@dataclass(frozen=True)
class ExpertProfile:
    """What a router may know of an expert: its name, its price and what it declares to be good at."""

    name: str
    price_per_mtok: float = 0.0
    domains: tuple[str, ...] = ()
    skills: tuple[str, ...] = ()


@dataclass
class Manifest:
    """router.json: identifies a trained artifact (family, name, version, data hash, metrics)."""

    family: str
    name: str
    version: str
    data_hash: str
    experts: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a router artifact: {MANIFEST} is missing")
        return cls(**json.loads(path.read_text()))


def data_hash(rows: Sequence[Mapping[str, Any]]) -> str:
    """A stable fingerprint of training data, stored in the manifest to tell artifacts apart."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]
