"""The values a chapter glues for its opening and its reference-run section, in one call.

Every experiment chapter opens with what it shows and its verdict
(:mod:`covidlib.report.opening`) and closes with what the published reference run found
(:func:`covidlib.report.reference.paragraph`). :func:`opening_values` builds the four glue
values (``<prefix>_artifacts``, ``_data``, ``_verdict``, ``_reference``) from what the chapter
computed; :func:`reports_opening` does it for a list of table reports (P2's
:class:`~covidlib.experiments.p2_report.TableReport`). A chapter glues the result with
:func:`covidlib.report.opening.glue_all`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from covidlib.report import opening
from covidlib.verdict import Verdict

__all__ = ["ChapterReport", "opening_values", "reports_opening"]


class ChapterReport(Protocol):
    """What :func:`reports_opening` needs of one table's report."""

    @property
    def artifact(self) -> str: ...

    @property
    def provenance(self) -> Mapping[str, Any]: ...

    def headline(self) -> str: ...


def _reference_markdown(artifacts: Sequence[str]) -> Any:
    """The reference run's paragraph about ``artifacts``, as Markdown for ``{glue:md}``."""
    from IPython.display import Markdown

    from covidlib.report import reference

    return Markdown(reference.paragraph(list(artifacts)))


def opening_values(prefix: str, provenances: Mapping[str, Mapping[str, Any]],
                   verdicts: Mapping[str, Verdict | str | Sequence[Verdict | str]],
                   reference_artifacts: Sequence[str], *, artifacts: bool = False
                   ) -> dict[str, Any]:
    """Glue values of a chapter: ``<prefix>_data`` (:func:`opening.chapter_data` of
    ``provenances``), ``<prefix>_verdict`` (:func:`opening.chapter_verdict` of ``verdicts``),
    ``<prefix>_reference`` (the reference run on ``reference_artifacts``, Markdown) and, with
    ``artifacts``, ``<prefix>_artifacts`` (the names of ``provenances``, comma-separated)."""
    if not prefix or not isinstance(prefix, str):
        raise opening.OpeningError(f"chapter glue: prefix {prefix!r} must be a non-empty string")
    if not reference_artifacts:
        raise opening.OpeningError(f"chapter glue {prefix!r}: no artifact for the reference "
                                   "run's paragraph")
    out: dict[str, Any] = {}
    if artifacts:
        out[f"{prefix}_artifacts"] = ", ".join(provenances)
    out[f"{prefix}_data"] = opening.chapter_data(provenances)
    out[f"{prefix}_verdict"] = opening.chapter_verdict(verdicts)
    out[f"{prefix}_reference"] = _reference_markdown(reference_artifacts)
    return out


def reports_opening(prefix: str, reports: Sequence[ChapterReport]) -> dict[str, Any]:
    """:func:`opening_values` for a chapter of table reports (one per artifact, in order):
    the artifacts, their data, their headlines as the verdict and the reference run on them."""
    if not reports:
        raise opening.OpeningError(f"chapter glue {prefix!r}: the chapter produced no report")
    return opening_values(prefix, {r.artifact: r.provenance for r in reports},
                          {r.artifact: r.headline() for r in reports},
                          [r.artifact for r in reports], artifacts=True)
