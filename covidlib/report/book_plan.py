"""The book plan (``book/plan.yml``): its entries, their run outcomes and the book's error type.

:func:`load_plan` validates the plan strictly; :mod:`covidlib.report.book` executes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROFILES = ("cpu", "reference", "gpu", "paper")
_ENTRY_KEYS = {"notebook", "output", "title", "parameters", "requires", "stage", "inputs",
               "profiles"}


class BookError(Exception):
    """The book plan or a notebook run is wrong; the message names the file and reason."""


@dataclass(frozen=True)
class PlanEntry:
    notebook: str
    output: str
    title: str
    parameters: dict[str, Any] = field(default_factory=dict)
    requires: str | None = None
    stage: int = 0
    inputs: tuple[str, ...] = ()
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-profile parameters merged over ``parameters`` (e.g. the reference run's seeds)."""

    def parameters_for(self, profile: str) -> dict[str, Any]:
        """``parameters`` with this profile's entry of ``profiles`` merged over them."""
        return {**self.parameters, **self.profiles.get(profile, {})}


@dataclass
class RunOutcome:
    entry: PlanEntry
    status: str  # "ok" | "failed" | "missing-data" | "reused" (unchanged: not re-executed)
    seconds: float
    error: str = ""
    worker: str = "local"  # the Dask worker address, or "local" when run in this process


def load_plan(path: Path) -> list[PlanEntry]:
    """Read and validate ``book/plan.yml``."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError as exc:
        raise BookError(f"{path}: book plan not found") from exc
    except yaml.YAMLError as exc:
        raise BookError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, list) or not raw:
        raise BookError(f"{path}: expected a non-empty list of chapters")
    entries, outputs = [], set()
    for i, item in enumerate(raw):
        where = f"{path}: entry {i}"
        if not isinstance(item, dict):
            raise BookError(f"{where}: expected a mapping, got {type(item).__name__}")
        unknown = set(item) - _ENTRY_KEYS
        if unknown:
            raise BookError(f"{where}: unknown keys {sorted(unknown)}")
        for key in ("notebook", "output", "title"):
            if not isinstance(item.get(key), str) or not item[key]:
                raise BookError(f"{where}: '{key}' must be a non-empty string")
        if item["output"] in outputs:
            raise BookError(f"{where}: output '{item['output']}' is used twice")
        outputs.add(item["output"])
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise BookError(f"{where}: 'parameters' must be a mapping")
        stage = item.get("stage", 0)
        if isinstance(stage, bool) or not isinstance(stage, int) or stage < 0:
            raise BookError(f"{where}: 'stage' must be an integer >= 0, got {stage!r}")
        inputs = item.get("inputs") or []
        if not isinstance(inputs, list) or not all(isinstance(i, str) and i for i in inputs):
            raise BookError(f"{where}: 'inputs' must be a list of paths, got {inputs!r}")
        profiles = item.get("profiles") or {}
        if not isinstance(profiles, dict) or not all(
                p in PROFILES and isinstance(v, dict) for p, v in profiles.items()):
            raise BookError(f"{where}: 'profiles' must map profile names {PROFILES} to "
                            f"parameter mappings, got {profiles!r}")
        entries.append(PlanEntry(item["notebook"], item["output"], item["title"], params,
                                 item.get("requires"), stage, tuple(inputs), profiles))
    return entries
