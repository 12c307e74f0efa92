"""Three-way verdicts for a paper's claim, and whether a baseline's training has converged.

Every claim the book checks ends in one of three verdicts (issue "Evidence a reader can
trust", item 2):

* ``reproduced``: the claim holds in our runs;
* ``not reproduced``: it does not, although the fully supervised baseline has converged (its
  validation curve has flattened), so the failure is a finding; the verdict says whether the
  mechanism the paper gives for its claim was present or absent in our runs;
* ``inconclusive``: it does not hold, but the baseline has not converged, so the run is too
  small to tell a wrong method from an under-trained network; or, either way, the
  comparison rests on fewer than :data:`MIN_SEEDS` seeds or on a difference inside the
  seeds' spread ("inconclusive (run too small: ...)"): one seed shows no spread, so neither
  "reproduced" nor "not reproduced" can be told from noise.

:func:`baseline_converged` decides "converged" from a validation curve; :func:`run_too_small`
whether a comparison of means over seeds can decide anything; :func:`three_way_verdict`
turns these facts into the verdict. All are paper-agnostic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "INCONCLUSIVE",
    "MIN_SEEDS",
    "NOT_REPRODUCED",
    "REPRODUCED",
    "TOO_SMALL",
    "VERDICTS",
    "Comparison",
    "Convergence",
    "Verdict",
    "baseline_converged",
    "combine_verdicts",
    "paired_spread",
    "run_too_small",
    "three_way_verdict",
]

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
VERDICTS: tuple[str, ...] = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
MIN_SEEDS = 2
"""Fewer seeds than this show no spread: a verdict from them is "inconclusive (run too small)"."""
TOO_SMALL = "run too small"


@dataclass(frozen=True)
class Convergence:
    """Outcome of :func:`baseline_converged`: ``converged``, the best validation score and
    its epoch (1-based), the gain of the last ``window`` epochs over the best before them,
    and a sentence saying why."""

    converged: bool
    best: float
    best_epoch: int | None
    gain: float
    reason: str


def baseline_converged(val_scores: Sequence[float | None], *, window: int = 3,
                       tol: float = 0.01) -> Convergence:
    """Has a validation curve (one score per epoch, higher is better) flattened?

    Converged when the best score of the last ``window`` epochs exceeds the best score of
    the epochs before them by less than ``tol`` (absolute): more training would not have
    changed the baseline. A curve of fewer than ``window + 1`` finite scores, one whose
    last ``window`` epochs are all missing, or one that never rose above 0 (flat at nothing)
    has not shown that it converged.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"baseline_converged: window={window!r} must be an integer >= 1")
    if not (isinstance(tol, int | float) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"baseline_converged: tol={tol!r} must be a finite number >= 0")
    vals = [float("nan") if v is None else float(v) for v in val_scores]
    finite = [(i, v) for i, v in enumerate(vals) if math.isfinite(v)]
    if not finite:
        return Convergence(False, float("nan"), None, float("nan"),
                           "no finite validation score")
    best_i, best = max(finite, key=lambda t: (t[1], -t[0]))
    if best <= 0:
        return Convergence(False, best, best_i + 1, float("nan"),
                           "the validation score never rose above 0: training has not started "
                           "to converge")
    if len(vals) < window + 1:
        return Convergence(False, best, best_i + 1, float("nan"),
                           f"only {len(vals)} epochs: fewer than {window + 1} to judge a plateau")
    head = [v for v in vals[:-window] if math.isfinite(v)]
    tail = [v for v in vals[-window:] if math.isfinite(v)]
    if not head or not tail:
        return Convergence(False, best, best_i + 1, float("nan"),
                           "missing validation scores around the last epochs")
    gain = max(tail) - max(head)
    if gain < tol:
        return Convergence(True, best, best_i + 1, gain,
                           f"validation flat: the last {window} epochs gain {gain:+.3f} "
                           f"(< {tol:g}) over the best before them")
    return Convergence(False, best, best_i + 1, gain,
                       f"still improving: the last {window} epochs gain {gain:+.3f} "
                       f"(>= {tol:g}) over the best before them")


@dataclass(frozen=True)
class Verdict:
    """A verdict (one of :data:`VERDICTS`) and its full sentence (``text``)."""

    label: str
    text: str

    def __str__(self) -> str:
        return self.text


def run_too_small(n_seeds: int | None = None, gap: float | None = None,
                  spread: float | None = None, *, unit: str = "seed",
                  spread_name: str = "the seeds' spread") -> str | None:
    """Why a comparison of two means over seeds cannot decide a claim, or ``None`` when it
    can: fewer than :data:`MIN_SEEDS` seeds (``n_seeds``: the smaller of the two sides), or
    a difference of the means ``gap`` that is not larger than the seeds' ``spread`` (e.g.
    the sum of the two standard deviations). ``None`` arguments are not checked. ``unit``
    and ``spread_name`` name what was counted and what the spread is in the reason (e.g.
    "training run", "two standard errors")."""
    if n_seeds is not None:
        if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 0:
            raise ValueError(f"run_too_small: n_seeds={n_seeds!r} must be an integer >= 0")
        if n_seeds < MIN_SEEDS:
            count = f"one {unit}" if n_seeds == 1 else f"{n_seeds} {unit}s"
            return f"{count}, no spread to compare the difference with"
    if gap is not None and spread is not None:
        gap, spread = abs(float(gap)), float(spread)
        if math.isnan(gap) or math.isnan(spread) or gap <= spread:
            return f"the difference {gap:.3f} is inside {spread_name} {spread:.3f}"
    return None


def paired_spread(diffs: Sequence[float]) -> tuple[int, float, float]:
    """``(n, mean, std)`` of paired per-seed differences (a - b of the same seed), the
    inputs of :func:`run_too_small`: the sample standard deviation (ddof 1) is the spread
    (0 for one difference, nan for none); non-finite differences are left out."""
    d = [float(x) for x in diffs if x is not None and math.isfinite(float(x))]
    if not d:
        return 0, math.nan, math.nan
    mean = math.fsum(d) / len(d)
    if len(d) == 1:
        return 1, mean, 0.0
    return len(d), mean, math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (len(d) - 1))


class Comparison(str):
    """A comparison's sentence (a ``str``, e.g. "holds: ...") that also carries the numbers
    :func:`run_too_small` needs: ``n_seeds`` (fewest seeds behind either side), ``gap``
    (the difference the claim is about) and ``spread`` (the seeds' spread); None when not
    known. Paper modules return it so a verdict can be drawn from the sentence alone."""

    n_seeds: int | None
    gap: float | None
    spread: float | None

    def __new__(cls, text: str, n_seeds: int | None = None, gap: float | None = None,
                spread: float | None = None) -> Comparison:
        obj = super().__new__(cls, text)
        obj.n_seeds, obj.gap, obj.spread = n_seeds, gap, spread
        return obj

    def stats(self) -> dict[str, Any]:
        """The keyword arguments of :func:`three_way_verdict` this comparison carries."""
        return {"n_seeds": self.n_seeds, "gap": self.gap, "spread": self.spread}


def three_way_verdict(claim_holds: bool, converged: bool | Convergence,
                      mechanism_present: bool | None = None, detail: str = "",
                      mechanism: str = "mechanism", *, n_seeds: int | None = None,
                      gap: float | None = None, spread: float | None = None) -> Verdict:
    """The verdict of one claim (module docstring): ``claim_holds`` in our runs, whether the
    fully supervised baseline ``converged``, and whether the paper's ``mechanism`` (named in
    the text) was measured present (None: not measured). ``detail`` (our numbers against the
    paper's) ends the sentence. With ``n_seeds`` (the fewest seeds behind either compared
    value) and/or ``gap`` and ``spread`` (:func:`run_too_small`) a comparison from one seed
    or inside the seeds' spread is "inconclusive (run too small: ...)" whichever way it
    went."""
    conv = converged.converged if isinstance(converged, Convergence) else bool(converged)
    tail = f": {detail}" if detail else ""
    mech = ("" if mechanism_present is None
            else f", {mechanism} {'present' if mechanism_present else 'absent'}")
    small = run_too_small(n_seeds, gap, spread)
    if small is not None:
        why = f" ({converged.reason})" if isinstance(converged, Convergence) else ""
        base = "" if conv else f"; the fully supervised baseline has not converged{why}"
        return Verdict(INCONCLUSIVE, f"{INCONCLUSIVE} ({TOO_SMALL}: {small}){base}{mech}{tail}")
    if claim_holds:
        return Verdict(REPRODUCED, f"{REPRODUCED}{tail}")
    if not conv:
        why = f" ({converged.reason})" if isinstance(converged, Convergence) else ""
        return Verdict(INCONCLUSIVE, f"{INCONCLUSIVE}, the fully supervised baseline has not "
                                     f"converged{why}{tail}")
    return Verdict(NOT_REPRODUCED, f"{NOT_REPRODUCED} with a converged baseline{mech}{tail}")


def combine_verdicts(parts: Mapping[str, Verdict]) -> Verdict:
    """One verdict for a claim checked on several parts (splits, datasets): ``reproduced``
    when every part is, ``inconclusive`` when a part that is not reproduced is
    inconclusive, else ``not reproduced``; the text lists every part's sentence."""
    if not parts:
        raise ValueError("combine_verdicts: no parts to combine")
    labels = {v.label for v in parts.values()}
    unknown = sorted(labels - set(VERDICTS))
    if unknown:
        raise ValueError(f"combine_verdicts: unknown verdict label(s) {unknown}")
    if labels == {REPRODUCED}:
        label = REPRODUCED
    elif INCONCLUSIVE in labels:
        label = INCONCLUSIVE
    else:
        label = NOT_REPRODUCED
    every = "; ".join(f"{name}: {v.text}" for name, v in parts.items())
    return Verdict(label, f"{label} ({every})")
