"""The Performance page's shared pieces: goals, labels, the results file and its sections.

See :mod:`covidlib.bench.report`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from covidlib.bench import SCHEMA
from covidlib.jsonio import read_json_if_present

NOT_MEASURED = "not measured"
MC_GOAL = 10.0  # head-only vs naive at I = 20
TRAIN_GOAL = 2.5  # bf16 + channels_last (+ compile) vs fp32 eager, on CUDA
BENCH_GOAL_S = 600.0  # make bench on the 2-core CPU machine
HOW_TO = ("No benchmark results were found at `{path}`. Produce them with `make bench` (about "
          "10 minutes on a 2-core CPU; on a quiet machine, since other load slows every figure), "
          "or `python -m covidlib.bench --out bench_results/bench.json`, then rebuild the book.")
_LABELS = {"head_only": "covidlib head-only", "naive": "naive full re-forward",
           "baal": "baal MCDropoutModule"}
_COLOURS = {"head_only": "tab:green", "naive": "tab:red", "baal": "tab:blue"}


def _sig(value: float, digits: int = 3) -> float:
    """``value`` rounded to ``digits`` significant digits (for tables)."""
    return float(f"{value:.{digits}g}")


def missing_section(res: Mapping[str, Any] | None, section: str) -> str | None:
    """``None`` when ``section`` is in ``res``; else the sentence the page shows instead ("" when
    there is no results file at all: the top of the page says how to make one)."""
    if res is None:
        return ""
    if section in res:
        return None
    return (f"The `{section}` benchmark is not in this results file (it was run with "
            f"`--sections {' '.join(k for k in res.get('settings', {}))}`); run `make bench` "
            "for every section.")


def _note(text: str) -> Any:
    """``text`` as Markdown for the notebook (``None`` for an empty text: nothing shown)."""
    if not text:
        return None
    from IPython.display import Markdown

    return Markdown(text)


def load_results(path: str | Path) -> dict[str, Any] | None:
    """The results file at ``path``, or ``None`` when it does not exist. A file of another
    format raises ``ValueError`` naming it and the reason."""
    path = Path(path)
    res = read_json_if_present(path, hint="; run `make bench` again")
    if res is None:
        return None
    if not isinstance(res, dict) or res.get("schema") != SCHEMA:
        found = res.get("schema") if isinstance(res, dict) else type(res).__name__
        raise ValueError(f"{path}: schema {found!r}, expected {SCHEMA!r}; run `make bench` again")
    return res
