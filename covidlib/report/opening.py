"""The two lines that open every chapter: what it shows (which paper artifact, on which
data) and its verdict, as strings a chapter glues (``myst_nb.glue``) and its first cell cites
with ``{glue:text}`` (issue 17, "every chapter opening with what it shows and its verdict").

Both are built from what the chapter already computed: its verdicts
(:class:`covidlib.verdict.Verdict` or the verdict strings of its scorecard entries) and the
provenance of its runs (:func:`covidlib.report.provenance.provenance`); nothing is typed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from covidlib.report.scorecard import data_kind
from covidlib.verdict import Verdict, combine_verdicts

__all__ = ["OpeningError", "chapter_data", "chapter_verdict"]


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
