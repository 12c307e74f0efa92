"""The reference run's paragraph says why a verdict is inconclusive: a run too small
(covidlib.verdict.TOO_SMALL, with its reason) is not an unconverged baseline."""

from __future__ import annotations

import json

import pytest

from covidlib.report import reference, scorecard

PROV = {"profile": "reference", "dataset": "ma20-slices/mixed", "hardware": "Test CPU",
        "date": "2026-12-03", "commit": "abc1234"}


@pytest.fixture
def ref(ref):
    """conftest's empty default reference folder, published (provenance only)."""
    folder = ref
    (folder / "provenance.json").write_text(json.dumps(
        {"format": reference.FORMAT, "profile": "reference", "commit": "abc1234",
         "finished": "2026-12-03T21:00:00+0000", "machine": {"cpu": "Test CPU", "cores": 2},
         "wall_seconds": {"total": 60.0}}))
    return folder


def _sentence(folder, verdict: str) -> str:
    scorecard.record(folder, "P1-F6", paper="p", ours="o", verdict=verdict, provenance=PROV)
    line = [x for x in reference.paragraph("P1-F6").splitlines() if "**P1-F6**" in x]
    return line[0]


def test_too_small_is_said_as_such(ref):
    text = _sentence(ref, "inconclusive (run too small: one seed, no spread to compare the "
                          "difference with): holds: K=16 lowest")
    assert ("Verdict **inconclusive**, the run was too small (one seed, no spread to compare "
            "the difference with): inconclusive (run too small") in text
    assert "had not converged" not in text


def test_too_small_with_nested_brackets_and_an_unconverged_baseline(ref):
    text = _sentence(ref, "**inconclusive** (run too small: only 2 paired test cases (< 3)): "
                          "x; the fully supervised baseline has NOT converged")
    assert ("the run was too small (only 2 paired test cases (< 3)) and its fully supervised "
            "baseline had not converged:") in text


def test_unconverged_baseline_is_still_said(ref):
    text = _sentence(ref, "inconclusive, the fully supervised baseline has not converged: x")
    assert "Verdict **inconclusive**, its fully supervised baseline had not converged:" in text
