"""Rebuilding committed P3 and P4 runs from their configs alone (``make verify-reference``).

:mod:`covidlib.report.reference_verify` recomputes a sample of the published reference run;
this module turns a committed config of P3's volume-level active learning (``p3_volume_al``,
P3 Sec. III) or of P4's pipeline (``p4_run``, ``p4_mechanism``, ``p4_teacher``; P4 Fig. 1)
back into today's settings and runs it in an empty results folder. Fields a config does not
record (P3's organ list and split mode, P4's profile-only fields) come from the
``reference`` profile; the verifier then matches the recomputed config against the
committed one, so a rebuild that drifts from the committed run fails instead of passing on
another config. Runs that produce other cached records on the way (P3's rounds and scores,
P4's teacher) leave them in the folder, where the verifier compares them too.

The label demo (``label_demo``, ``label_demo_warm``) is not rebuilt: see
:data:`NOT_RECOMPUTED`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["NOT_RECOMPUTED", "StaleRun", "p3_overrides", "p4_overrides", "recompute_p3",
           "recompute_p4"]

NOT_RECOMPUTED: dict[str, str] = {
    "label_demo": "not recomputed: its annotation files stamp every answer with the "
                  "wall-clock time and the run replays six labelling cycles after a warm "
                  "start (minutes); its numbers are checked by the file checksums only",
    "label_demo_warm": "not recomputed: the label demo's warm start stores only its slice "
                       "count (the weights are not published); checked by the file "
                       "checksums only",
}
"""Published kinds the verifier does not recompute, and why (reported, never silent)."""


class StaleRun(ValueError):
    """The committed run cannot be rebuilt by today's code (its message says why)."""


def _tuples(value: Any) -> Any:
    """JSON lists back to the tuples the settings dataclasses hold (nested)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _settings(module: Any, overrides: Mapping[str, Any], what: str) -> Any:
    try:
        return module.settings("reference", {k: _tuples(v) for k, v in overrides.items()})
    except (TypeError, ValueError) as exc:
        raise StaleRun(f"today's {what} settings cannot take the committed config ({exc})"
                       ) from exc


def p3_overrides(config: Mapping[str, Any]) -> dict[str, Any]:
    """The P3 settings of a committed ``p3_volume_al`` config (P3 Sec. III): its training
    fields, model, counts of test / val / initial volumes and per-iteration picks; the
    fully supervised baseline is not trained (``reference_seeds=0``)."""
    try:
        model, split = config["model"], config["split"]
        out = {k: config[k] for k in ("loss", "grid", "window", "lr", "batch_size", "patch",
                                      "patches_per_volume", "epochs", "iterations",
                                      "n_samples", "warm_start")}
        out.update(base_width=model["base_width"], depth=model["depth"],
                   dropout=model["dropout"], test=len(split["test"]), val=len(split["val"]),
                   initial=len(config["initial"]), per_iteration=int(config["per_iteration"]),
                   reference_seeds=0)
    except (KeyError, TypeError) as exc:
        raise StaleRun(f"the committed P3 config lacks {exc} (today's code records it)"
                       ) from exc
    if config.get("warm_epochs") is not None:
        out["warm_epochs"] = config["warm_epochs"]
    return out


def recompute_p3(config: Mapping[str, Any], results_dir: Path, data_root: Any) -> None:
    """Run the committed P3 task / strategy / seed in ``results_dir`` (its rounds and MC
    scores are cached beside it, in ``p3_round`` / ``p3_scores``)."""
    from covidlib.data.api import open_dataset
    from covidlib.experiments import p3

    s = _settings(p3, p3_overrides(config), "P3")
    ds = open_dataset(config["dataset"], data_root)
    p3.run(ds, s, tasks=[config["task"]], seeds=[int(config["seed"])],
           strategies=[config["strategy"]], results_dir=results_dir, device="cpu",
           progress=False)


_P4_TEACHER = ("spacing", "patch", "size_2d", "window", "pool_size", "pool_shape", "pool_2d",
               "infer_roi", "batch", "lr", "optimizer", "pos_fraction", "teacher_steps",
               "history_max", "figure_cases", "overlap")
_P4_STUDENT = ("lam", "meta_lr", "expert_term", "gem_norm", "rgs_method")


def _teacher(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The teacher config of a committed P4 config (itself for ``kind: teacher``)."""
    kind = config.get("kind")
    if kind == "teacher":
        return config
    if kind in ("run", "mechanism") and isinstance(config.get("teacher"), Mapping):
        return config["teacher"]
    raise StaleRun(f"P4 config of kind {kind!r}: expected 'teacher', 'run' or 'mechanism' "
                   "with its teacher's config")


def p4_overrides(config: Mapping[str, Any]) -> dict[str, Any]:
    """The P4 settings of a committed ``p4_teacher`` / ``p4_run`` / ``p4_mechanism`` config:
    the teacher's data and training fields, the student's (Alg. 1) where recorded, and the
    committed fold as the only fold."""
    tcfg = _teacher(config)
    try:
        out = {k: tcfg[k] for k in _P4_TEACHER}
        out["folds"] = (int(tcfg["fold"]),)
        if config.get("kind") == "run":
            out.update(student_steps=config["student_steps"], init=config["init"])
        out.update({k: config[k] for k in _P4_STUDENT if k in config})
    except (KeyError, TypeError) as exc:
        raise StaleRun(f"the committed P4 config lacks {exc} (today's code records it)"
                       ) from exc
    return out


def recompute_p4(config: Mapping[str, Any], results_dir: Path, data_root: Any) -> None:
    """Rebuild the committed P4 teacher, run or mechanism probe in ``results_dir`` (a run or
    probe trains its teacher first: ``p4_teacher`` is cached beside it)."""
    import torch

    from covidlib.cache import ResultCache
    from covidlib.data.api import open_dataset
    from covidlib.experiments import p4
    from covidlib.experiments.p4_settings import Diagnostics

    tcfg = _teacher(config)
    if config.get("version") != p4.VERSION or tcfg.get("version") != p4.VERSION:
        raise StaleRun(f"committed by code version {config.get('version')!r}, the code is "
                       f"{p4.VERSION!r}: publish a new reference run")
    s = _settings(p4, p4_overrides(config), "P4")
    curve = config.get("curve") or [0, 0]
    diag = Diagnostics(curve_points=int(curve[0]), curve_items=int(curve[1]),
                       probe_batches=int(config.get("batches", 0)))
    data = tcfg.get("data") if isinstance(tcfg.get("data"), Mapping) else {}
    ds = open_dataset(data.get("name", ""), data_root)
    ctx = p4._Context(ds, s, int(tcfg["fold"]), int(tcfg["seed"]), tcfg["pseudo_labels"],
                      ResultCache(results_dir), torch.device("cpu"), False, {}, diag)
    if config["kind"] == "teacher":
        ctx.teacher_result()
    elif config["kind"] == "mechanism":
        ctx.mechanism()
    else:
        ctx.run(config["method"])
