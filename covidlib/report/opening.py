"""The two lines that open every chapter: what it shows (which paper artifact, on which
data) and its verdict, as strings a chapter glues (``myst_nb.glue``) and its first cell cites
with ``{glue:text}`` (issue 17, "every chapter opening with what it shows and its verdict").

Both are built from what the chapter already computed: its verdicts
(:class:`covidlib.verdict.Verdict` or the verdict strings of its scorecard entries) and the
provenance of its runs (:func:`covidlib.report.provenance.provenance`); nothing is typed.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from covidlib.report.scorecard import data_kind
from covidlib.verdict import Verdict, baseline_converged, combine_verdicts

__all__ = ["GlueFn", "OpeningError", "chapter_data", "chapter_verdict", "convergence_rule",
           "glue_all", "glue_runtime", "runtime_line"]

GlueFn = Callable[[str, Any], None]


class OpeningError(ValueError):
    """A chapter's opening cannot be built from what it was given."""


def _text(value: Verdict | str | Sequence[Verdict | str], where: str) -> str:
    if isinstance(value, Verdict):
        return value.text
    if isinstance(value, str):
        if not value.strip():
            raise OpeningError(f"chapter verdict {where!r}: empty verdict string")
        return value.replace("**", "").strip()  # a plain line: no Markdown emphasis
    if isinstance(value, Sequence) and value:
        return "; ".join(_text(v, where) for v in value)
    raise OpeningError(f"chapter verdict {where!r}: expected a Verdict, a string or a "
                       f"non-empty list of them, got {value!r}")


def chapter_verdict(parts: Mapping[str, Verdict | str | Sequence[Verdict | str]]) -> str:
    """One line: the chapter's verdicts by artifact (or split, or task).

    When every part is a :class:`~covidlib.verdict.Verdict` they are combined by
    :func:`covidlib.verdict.combine_verdicts` (one label first, then each part's sentence);
    otherwise each part's text is listed as ``name: text`` (a list of texts is joined by
    ``;``; Markdown bold ``**`` is dropped: ``{glue:text}`` shows text as it is). A single
    part without a name is its text alone.
    """
    if not parts:
        raise OpeningError("chapter verdict: the chapter computed no verdict to open with")
    if all(isinstance(v, Verdict) for v in parts.values()):
        if len(parts) == 1:
            return next(iter(parts.values())).text
        return combine_verdicts(dict(parts)).text
    texts = {name: _text(v, name) for name, v in parts.items()}
    if len(texts) == 1 and not next(iter(texts)):
        return next(iter(texts.values()))
    return "; ".join(f"{name}: {text}" for name, text in texts.items())


def chapter_data(provenances: Mapping[str, Mapping[str, Any]]) -> str:
    """Which data the chapter ran on, from its runs' provenance (``dataset``) and the kind the
    dataset's manifest declares (real / phantom / real 2-D derivative): ``"ma20-slices (real
    2-D derivative)"``, or ``"P2-T5: ...; P2-T6: ..."`` when the parts used different data."""
    if not provenances:
        raise OpeningError("chapter data: no provenance given (which runs does the chapter show?)")
    words: dict[str, str] = {}
    for name, prov in provenances.items():
        dataset = prov.get("dataset") if isinstance(prov, Mapping) else None
        if not dataset:
            raise OpeningError(f"chapter data {name!r}: its provenance names no 'dataset' "
                               f"(got {prov!r})")
        kind = data_kind(prov)
        words[name] = f"{dataset} ({kind})" if kind else str(dataset)
    if len(set(words.values())) == 1:
        return next(iter(words.values()))
    return "; ".join(f"{name}: {text}" for name, text in words.items())


def _glue_fn(glue: GlueFn | None) -> GlueFn:
    """``glue`` itself, or ``myst_nb.glue(name, value, display=False)`` (in a chapter's kernel)."""
    if glue is not None:
        return glue
    from myst_nb import glue as myst_glue

    return lambda name, value: myst_glue(name, value, display=False)


def glue_all(values: Mapping[str, Any], *, glue: GlueFn | None = None) -> list[str]:
    """Glue every ``name -> value`` of ``values`` (not displayed) for the chapter's prose
    (``{glue:text}`name```); returns the names glued, in order."""
    fn = _glue_fn(glue)
    for name, value in values.items():
        if not isinstance(name, str) or not name:
            raise OpeningError(f"glue: name {name!r} must be a non-empty string")
        fn(name, value)
    return list(values)


def runtime_line(minutes: float, profile: str, seeds: Sequence[Any] | None = None,
                 dataset: str | None = None) -> str:
    """``"chapter ran in 1.2 min (cpu profile, 2 seed(s), synthetic)"``; the seeds and
    dataset parts only when given."""
    parts = [f"{profile} profile"]
    if seeds is not None:
        parts.append(f"{len(seeds)} seed(s)")
    if dataset is not None:
        parts.append(str(dataset))
    return f"chapter ran in {minutes:.1f} min ({', '.join(parts)})"


def glue_runtime(prefix: str, t_start: float, profile: str, seeds: Sequence[Any] | None = None,
                 dataset: str | None = None, *, now: float | None = None,
                 glue: GlueFn | None = None) -> str:
    """Glue ``f"{prefix}_minutes"``: the minutes since ``t_start`` (a ``time.perf_counter()``
    reading taken when the chapter began; ``now`` defaults to the current reading), rounded
    to 0.1; returns :func:`runtime_line` for the chapter to print."""
    elapsed = (time.perf_counter() if now is None else now) - t_start
    if elapsed < 0:
        raise OpeningError(f"glue_runtime {prefix!r}: t_start={t_start!r} lies after "
                           f"now={now!r} (expected a time.perf_counter() reading)")
    minutes = elapsed / 60
    _glue_fn(glue)(f"{prefix}_minutes", round(minutes, 1))
    return runtime_line(minutes, profile, seeds, dataset)


def convergence_rule(prefix: str, *, rule: Callable[..., Any] = baseline_converged,
                     glue: GlueFn | None = None) -> dict[str, Any]:
    """The rule a fully supervised baseline must pass to count as converged: the defaults
    ``window`` (epochs) and ``tol`` (Dice) of :func:`covidlib.verdict.baseline_converged`
    (or of the wrapper ``rule`` a chapter uses, where it has them), read from the signatures
    and glued as ``f"{prefix}_conv_window"`` and ``f"{prefix}_conv_tol"`` for the chapters'
    prose; returns ``{"window": .., "tol": ..}``."""
    base = inspect.signature(baseline_converged).parameters
    params = inspect.signature(rule).parameters
    out = {}
    for name in ("window", "tol"):  # a wrapper without the parameter passes the default on
        p = params.get(name)
        out[name] = (p.default if p is not None and p.default is not inspect.Parameter.empty
                     else base[name].default)
    glue_all({f"{prefix}_conv_window": out["window"], f"{prefix}_conv_tol": out["tol"]},
             glue=glue)
    return out
