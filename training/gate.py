"""Gate profiles: the thresholds a router version's metrics must meet before it is promoted.

A profile is JSON: a description and a list of checks, each naming a metric of the version (`moe router versions`
shows them; `moe router retrain` writes them) and a `min`, a `max` or both. A metric the version lacks, or one that
is not a finite number, fails its check: a gate passes only on evidence. training/gates/default.json is an example.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Check(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(min_length=1)
    min: float | None = None
    max: float | None = None
    why: str = ""  # what the threshold protects, for whoever reads a failed gate

    @model_validator(mode="after")
    def _bounded(self) -> Check:
        if self.min is None and self.max is None:
            raise ValueError(f"check {self.metric!r} needs a min, a max or both")
        return self


class GateProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    checks: list[Check] = Field(min_length=1)


@dataclass(frozen=True)
class Outcome:
    check: Check
    value: float | None  # None: the version has no such metric, or it is not a number

    @property
    def passed(self) -> bool:
        if self.value is None or not math.isfinite(self.value):
            return False
        return (self.check.min is None or self.value >= self.check.min) and (
            self.check.max is None or self.value <= self.check.max
        )

    @property
    def threshold(self) -> str:
        bounds = [f">= {self.check.min:g}" if self.check.min is not None else "",
                  f"<= {self.check.max:g}" if self.check.max is not None else ""]
        return " and ".join(bound for bound in bounds if bound)


def load_profile(path: Path) -> GateProfile:
    """The profile at `path`; ValueError saying what is wrong with it."""
    try:
        return GateProfile.model_validate_json(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'profile'}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path} is not a gate profile: {problems}") from None


def run_gate(profile: GateProfile, metrics: Mapping[str, Any]) -> list[Outcome]:
    return [Outcome(check, _number(metrics.get(check.metric))) for check in profile.checks]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
