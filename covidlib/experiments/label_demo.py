"""The "Label your own slices" chapter: the labelling widget on a dataset, and what its
clicks buy, measured with a simulated annotator.

:func:`demo` opens a :class:`~covidlib.widgets.LabelSession` on a pool of training slices,
warm-started from the widget's model trained on the full masks of other training volumes
(:func:`warm_start`, :func:`covidlib.widgets.pretrain`) and asking only about regions on the
lungs (``regions="body"``; the ``paper`` profile keeps P1's full grid and no warm start).
P1's simulated annotator (:class:`~covidlib.widgets.MaskOracle`) answers the proposed regions
through the same session API for a few cycles; after each cycle the model is scored on slices
of the held-out test volumes. :func:`compare` does this for P1's ``entropy`` and ``random``
strategies and several seeds; :func:`curves_frame`, :func:`summary` and :func:`plot_curves`
turn the runs into Dice against seconds of clicking (3 s per answer, P1 Sec. 5.3), the
answers needed to reach a stated Dice and the share of questions that landed on infection.

The settings are typed (:class:`~covidlib.experiments.label_demo_settings.LabelDemoSettings`,
profiles ``cpu``, ``reference``, ``gpu``, ``paper``). Every run is cached by its full
configuration (:class:`covidlib.cache.ResultCache`) with its
annotations, its final weights (``<hash>.pt``) and a replay (the model's prediction on one
held-out slice after each cycle); on a cache hit the session is restored exactly, so the
chapter shows the same model and proposals as the run that made them.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from covidlib import checkpoint as _ckpt
from covidlib.cache import ResultCache, config_hash
from covidlib.data.api import Dataset
from covidlib.data.splits import make_split
from covidlib.experiments.label_demo_settings import PROFILES, LabelDemoSettings, settings
from covidlib.widgets import LabelSession, MaskOracle, choose_pool, pretrain, simulate

__all__ = ["PROFILES", "STRATEGIES", "TARGET_FRACTION", "DemoRun", "LabelDemoSettings", "compare",
           "curves_frame", "demo", "history_frame", "load_cases", "own_session", "plot_curves",
           "plot_history", "plot_query", "plot_replay", "replay_frame", "settings", "summary",
           "target_dice", "warm_start"]

STRATEGIES = ("entropy", "random")


@dataclass
class DemoRun:
    """One simulated labelling run: the session at its end, its cycles (cycle 0: the warm
    model before any answer), whether it came from the cache, and its configuration."""

    session: LabelSession
    history: list[dict[str, Any]]
    cached: bool
    config: dict[str, Any]
    warm_state: dict[str, torch.Tensor] | None = None
    replay: dict[str, Any] | None = None

    @property
    def settings(self) -> LabelDemoSettings:
        """The run's settings (from its configuration, validated)."""
        return LabelDemoSettings(**self.config["settings"])


def load_cases(ds: Dataset) -> list:
    """The labelled cases, with the lung masks of the dataset's alt mask ``lung`` when it has
    one (ma20-slices), so the widget asks only about regions on the lungs."""
    groups = ds.labelled_groups
    group = groups if len(groups) > 1 else None
    cases = ds.cases(group)
    has_lung = all("lung" in g.alt_masks for g in ds.manifest.layout.groups
                   if g.name in groups)
    if not has_lung or all(c.lung is not None for c in cases):
        return cases
    lungs = {c.case_id: c.mask for c in ds.cases(group, alt_mask="lung")}
    return [replace(c, lung=np.asarray(lungs[c.case_id]) > 0) if c.lung is None else c
            for c in cases]


def _split(ds: Dataset, cases: list) -> dict[str, list]:
    """The dataset's by-volume split ``sep`` when it has one, else its first split."""
    names = list(ds.manifest.splits)
    name = "sep" if "sep" in names else names[0]
    return make_split(cases, ds.manifest.split(name))


def _parts(ds: Dataset, cases: list, s: LabelDemoSettings, seed: int
           ) -> tuple[list, list, list]:
    """``(warm-start slices, pool, held-out slices)``: the first ``warm_volumes`` train
    volumes train the warm start, the pool comes from the other train volumes, the held-out
    slices from the test volumes (val when there is no test part)."""
    split = _split(ds, cases)
    train = split["train"]
    volumes = list(dict.fromkeys(c for c, _ in train))
    n_warm = s.warm_volumes
    if n_warm and n_warm >= len(volumes):
        raise ValueError(f"label_demo: warm_volumes={n_warm} leaves no train volume for the "
                         f"pool ({len(volumes)} train volumes)")
    warm_ids = set(volumes[:n_warm])
    warm = ([] if not n_warm else
            choose_pool(cases, [r for r in train if r[0] in warm_ids], n=s.warm_slices,
                        seed=2))
    pool = choose_pool(cases, [r for r in train if r[0] not in warm_ids], n=s.pool,
                       seed=seed)
    eval_refs = choose_pool(cases, split["test"] or split["val"], n=s.eval, seed=seed + 1)
    return warm, pool, eval_refs


def warm_start(ds: Dataset, cases: list, refs: list, s: LabelDemoSettings, seed: int,
               results_dir: str | Path, device: str = "cpu"
               ) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
    """The warm-start weights (:func:`covidlib.widgets.pretrain` on ``refs``, full masks),
    cached in ``results_dir``; ``(None, None)`` when the profile has no warm start."""
    if not refs or not s.warm_epochs:
        return None, None
    config = {"dataset": ds.fingerprint(), "slices": [list(r) for r in refs],
              "size": s.size, "epochs": s.warm_epochs, "lr": s.warm_lr,
              "batch_size": s.batch_size, "seed": seed, "device": device,
              "infection_weight": s.infection_weight,
              "model": "unet2d(base_width=8, depth=3, dropout=0.5)", "loss": "cross-entropy"}
    cache = ResultCache(results_dir)
    weights = cache.path("label_demo_warm", config).with_suffix(".pt")
    if weights.exists() and cache.get("label_demo_warm", config) is not None:
        state = _verified(weights, config)
        if state is not None:
            return state, config
    state = pretrain(cases, refs, size=s.size, epochs=s.warm_epochs, lr=s.warm_lr,
                     batch_size=s.batch_size, seed=seed, device=device,
                     infection_weight=s.infection_weight)
    weights.parent.mkdir(parents=True, exist_ok=True)
    _ckpt.save(state, weights, config_digest=config_hash(config))
    cache.put("label_demo_warm", config, {"slices": len(refs)})
    return state, config


def _verified(weights: Path, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """Weights cached for ``config``, verified (sha256, config digest); a damaged or foreign
    file is moved aside with a warning and ``None`` returned (the caller trains again)."""
    try:
        return _ckpt.load(weights, config_digest=config_hash(config))
    except _ckpt.CheckpointError as exc:
        aside = _ckpt.move_aside(weights)
        warnings.warn(f"{exc}; moved aside to {aside}: trained again", stacklevel=3)
        return None


def demo(ds: Dataset, profile: str, overrides: Mapping[str, Any] | None, results_dir: str | Path,
         annotations_path: str | Path, seed: int = 0, device: str = "cpu",
         strategy: str = "entropy") -> DemoRun:
    """Simulated labelling on ``ds`` (see the module docstring); ``annotations_path`` is
    replaced by the run's annotations. ``strategy``: P1's ``entropy`` or ``random``."""
    if strategy not in STRATEGIES:
        raise ValueError(f"label_demo: strategy={strategy!r}; choose one of {STRATEGIES}")
    s = settings(profile, overrides)
    cases = load_cases(ds)
    warm_refs, pool, eval_refs = _parts(ds, cases, s, seed)
    # one warm start for every seed (a fixed checkpoint; the seeds vary the pool, the oracle
    # and the questions)
    state, warm_config = warm_start(ds, cases, warm_refs, s, 0, results_dir, device)
    config = {"dataset": ds.name, "seed": seed, "device": device,
              "settings": dataclasses.asdict(s),  # the key of every cached run: keep its order
              "pool": [list(r) for r in pool], "eval": [list(r) for r in eval_refs],
              "model": "unet2d(base_width=8, depth=3, dropout=0.5)",
              "warm": None if warm_config is None else config_hash(warm_config),
              "session": {"reduce": "max", "warm_start": True, "loss": "point (P2 Eq. 2)",
                          "regions": s.regions, "strategy": strategy}}
    cache = ResultCache(results_dir)
    path = Path(annotations_path)
    path.unlink(missing_ok=True)
    stored = cache.get("label_demo", config)
    if stored is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(stored["annotations"])
    session = _session(cases, path, s, config, state)
    weights = cache.path("label_demo", config).with_suffix(".pt")
    saved = _verified(weights, config) if stored is not None and weights.exists() else None
    if saved is not None:
        session.restore_model(saved, cycle=len(stored["history"]) - 1)
        return DemoRun(session, stored["history"], True, config, state, stored["replay"])
    if stored is not None:  # weights lost: run again from an empty file
        path.unlink()
        session = _session(cases, path, s, config, state)
    by_id = {c.case_id: c for c in cases}
    shown = max(eval_refs, key=lambda r: int((by_id[r[0]].mask[r[1]] > 0).sum()))
    predictions = [_as_u8(session.predict(shown))]
    simulate(session, MaskOracle(cases, ds.manifest.infection_labels, seed=seed),
                    cycles=s.cycles, initial_images=s.initial_images, seed=seed,
                    progress=False,
                    on_cycle=lambda _r: predictions.append(_as_u8(session.predict(shown))))
    history = session.records  # cycle 0: the warm model before any answer
    replay = {"ref": list(shown), "predictions": predictions}
    weights.parent.mkdir(parents=True, exist_ok=True)
    _ckpt.save({k: v.cpu() for k, v in session.model.state_dict().items()}, weights,
               config_digest=config_hash(config))
    cache.put("label_demo", config, {"history": history, "annotations": path.read_text(),
                                     "replay": replay})
    return DemoRun(session, history, False, config, state, replay)


def _as_u8(prob: np.ndarray) -> list[list[int]]:
    """A probability map as 0..255 integers (JSON-sized, for the replay)."""
    return np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8).tolist()


def _session(cases: list, path: Path, s: LabelDemoSettings, config: Mapping[str, Any],
             state: Mapping[str, torch.Tensor] | None,
             state_dir: Path | None = None) -> LabelSession:
    """The session of a run: settings ``s``, pool, held-out slices and seed of ``config``."""
    opts = config["session"]
    return LabelSession(cases, path, n_regions=s.n_regions, n_mc=s.n_mc,
                        slices=[tuple(r) for r in config["pool"]], size=s.size,
                        regions_per_cycle=s.regions_per_cycle, epochs=s.epochs,
                        lr=s.lr, batch_size=s.batch_size,
                        eval_slices=[tuple(r) for r in config["eval"]],
                        dataset=config["dataset"], seed=config["seed"],
                        device=config["device"], reduce=opts["reduce"],
                        warm_start=opts["warm_start"], regions=opts["regions"],
                        strategy=opts["strategy"], init_state=state,
                        point_weight=s.point_weight, state_dir=state_dir)


def own_session(ds: Dataset, run: DemoRun, annotations_path: str | Path,
                state_dir: str | Path | None = None) -> LabelSession:
    """A session for a person on the demo's pool and settings, labels kept in
    ``annotations_path`` (restored when it exists); the model starts from the warm start.
    Its trained model, cycles and questions are saved in ``state_dir`` (default: the folder
    ``<annotations_path>.state``, made after the first cycle) and resumed from there."""
    path = Path(annotations_path)
    folder = Path(state_dir) if state_dir is not None else path.with_name(path.name + ".state")
    return _session(load_cases(ds), path, run.settings, run.config, run.warm_state, folder)


def compare(ds: Dataset, profile: str, overrides: Mapping[str, Any] | None,
            results_dir: str | Path, seeds: Iterable[int], device: str = "cpu",
            strategies: Iterable[str] = STRATEGIES) -> dict[tuple[str, int], DemoRun]:
    """The oracle labelling through the session API once per strategy and seed (P1's
    entropy vs random); annotations under ``<results_dir>/label_demo/runs/``."""
    folder = Path(results_dir) / "label_demo" / "runs"
    out = {}
    jobs = [(st, int(sd)) for st in strategies for sd in seeds]
    for st, sd in tqdm(jobs, desc="simulated annotators", unit="run"):
        out[(st, sd)] = demo(ds, profile, overrides, results_dir,
                             folder / f"{ds.name}-{st}-{sd}.jsonl", seed=sd, device=device,
                             strategy=st)
    return out


def curves_frame(runs: Mapping[tuple[str, int], DemoRun]):
    """One row per (strategy, seed, cycle): answers, seconds of clicking, held-out Dice and
    the share of the answers so far that were clicks on infection."""
    import pandas as pd

    rows = []
    for (st, sd), run in runs.items():
        for h in run.history:
            rows.append({"strategy": st, "seed": sd, "cycle": h["cycle"],
                         "answers": h["labels"], "seconds": h["cost_seconds"],
                         "dice": h.get("test_dice", np.nan),
                         "on_infection": h["points"] / h["labels"] if h["labels"] else np.nan})
    return pd.DataFrame(rows)


TARGET_FRACTION = 0.9
"""Without a profile ``target_dice``: the target is this share of the best final Dice."""


def target_dice(frame, s: LabelDemoSettings) -> float:
    """The Dice the summary counts clicks to: the profile's ``target_dice``, else 90 % of the
    best final mean Dice over the strategies (rounded to 0.01)."""
    if s.target_dice is not None:
        return float(s.target_dice)
    last = frame[frame["cycle"] == frame["cycle"].max()]
    return round(TARGET_FRACTION * float(last.groupby("strategy")["dice"].mean().max()), 2)


def summary(frame, target: float):
    """Per strategy: final Dice (mean and sd over seeds), answers and seconds needed to first
    reach ``target`` (mean over the seeds that reach it; how many did), share of the
    questions that landed on infection."""
    import pandas as pd

    rows = []
    for st, g in frame.groupby("strategy", sort=False):
        last = g[g["cycle"] == g["cycle"].max()]
        reach = []
        for _sd, r in g.groupby("seed"):
            hit = r[r["dice"] >= target].sort_values("cycle")
            if len(hit):
                reach.append(int(hit["answers"].iloc[0]))
        rows.append({"strategy": st, "final Dice": float(last["dice"].mean()),
                     "final Dice sd": float(last["dice"].std(ddof=0)),
                     "answers to target": float(np.mean(reach)) if reach else np.nan,
                     "seconds to target": 3.0 * float(np.mean(reach)) if reach else np.nan,
                     "seeds reaching target": f"{len(reach)}/{g['seed'].nunique()}",
                     "on infection": float(last["on_infection"].mean())})
    return pd.DataFrame(rows)


def plot_curves(frame, target: float | None = None):
    """Held-out Dice against seconds of clicking (3 s per answer, P1 Sec. 5.3), mean and
    per-seed range of each strategy."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.4), dpi=110)
    for st, colour in zip(STRATEGIES, ("tab:red", "tab:blue"), strict=True):
        g = frame[frame["strategy"] == st]
        if g.empty:
            continue
        agg = g.groupby("cycle").agg(seconds=("seconds", "mean"), mean=("dice", "mean"),
                                     lo=("dice", "min"), hi=("dice", "max"))
        ax.plot(agg["seconds"], agg["mean"], "o-", color=colour,
                label=f"{st} ({g['seed'].nunique()} seeds)")
        ax.fill_between(agg["seconds"], agg["lo"], agg["hi"], color=colour, alpha=0.15)
    if target is not None:
        ax.axhline(target, color="k", ls=":", lw=1, label=f"target Dice {target:.2f}")
    ax.set_xlabel("seconds of clicking (3 s per click or background tag)")
    ax.set_ylabel("Dice on held-out test volumes")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", frameon=False)
    fig.tight_layout()
    return fig


def history_frame(history: list[dict[str, Any]]):
    """The cycles as a table: labels, annotator time and Dice on held-out slices."""
    import pandas as pd

    frame = pd.DataFrame(history)
    cols = {"cycle": "cycle", "labels": "labels", "points": "points",
            "backgrounds": "background tags", "slices": "slices touched",
            "cost_seconds": "annotator seconds", "train_seconds": "training seconds",
            "test_dice": "test Dice", "test_sens": "test sensitivity",
            "test_spec": "test specificity"}
    return frame[[c for c in cols if c in frame]].rename(columns=cols).round(3)


def plot_history(history: list[dict[str, Any]]):
    """Dice on held-out slices against the annotator's seconds (3 s per answer, P1 Sec 5.3)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.2), dpi=110)
    x = [h["cost_seconds"] for h in history]
    ax.plot(x, [h.get("test_dice", np.nan) for h in history], "o-", label="Dice")
    ax.plot(x, [h.get("test_sens", np.nan) for h in history], "s--", label="sensitivity",
            alpha=0.7)
    ax.set_xlabel("annotator time (s): 3 s per click or background tag")
    ax.set_ylabel("held-out score")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", frameon=False)
    ax.set_title("Simulated annotator: held-out scores after each cycle")
    fig.tight_layout()
    return fig


def replay_frame(run: DemoRun, cycles: int | None = None):
    """The recorded session as a table: every question in the order asked (cycle, slice,
    region) and the answer (a click's pixel, or "background")."""
    import pandas as pd

    bounds = [h["labels"] for h in run.history]
    rows = []
    for i, a in enumerate(run.session.annotations):
        cycle = next(c for c, b in enumerate(bounds) if i < b)
        if cycles is not None and cycle > cycles:
            break
        y0, y1, x0, x1 = a.box
        rows.append({"cycle": cycle, "question": i + 1, "case": a.case_id, "slice": a.z,
                     "region (rows, columns)": f"{y0}-{y1 - 1}, {x0}-{x1 - 1}",
                     "answer": (f"click at ({a.y}, {a.x})" if a.kind == "point"
                                else "background")})
    return pd.DataFrame(rows)


def plot_replay(run: DemoRun, cases: list, max_panels: int = 7):
    """The model's infection probability on one held-out slice (the one with the most
    infection) after each cycle of the recorded session, the expert outline in cyan."""
    import matplotlib.pyplot as plt

    from covidlib.data.preprocess import resize_mask

    if not run.replay:
        raise ValueError("plot_replay: this run recorded no replay")
    cid, z = run.replay["ref"]
    case = {c.case_id: c for c in cases}[cid]
    preds = [np.asarray(p, dtype=np.uint8) for p in run.replay["predictions"]]
    keep = sorted(set(np.linspace(0, len(preds) - 1, min(max_panels, len(preds)))
                      .round().astype(int)))
    size = preds[0].shape
    truth = resize_mask((np.asarray(case.mask[z]) > 0).astype(np.uint8), size)
    fig, axes = plt.subplots(1, len(keep), figsize=(1.9 * len(keep), 2.3), dpi=110,
                             squeeze=False)
    for ax, c in zip(axes[0], keep, strict=True):
        ax.imshow(preds[c], cmap="magma", vmin=0, vmax=255)
        ax.contour(truth, levels=[0.5], colors="cyan", linewidths=0.8)
        h = run.history[c]
        ax.set_title(f"cycle {c}\n{h['labels']} answers, held-out Dice "
                     f"{h.get('test_dice', np.nan):.2f}",
                     fontsize=8)
        ax.set_axis_off()
    fig.suptitle(f"{cid} slice {z}: the model's infection probability after each cycle",
                 fontsize=9)
    fig.tight_layout()
    return fig


def plot_query(session: LabelSession):
    """What the widget shows, as a figure: the slice with the region asked about and the
    labels given on it, beside the model's MC-dropout entropy."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cur = session.current()
    if cur is None:
        raise ValueError("plot_query: every region of the pool is answered")
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.2), dpi=110)
    axes[0].imshow(cur.image, cmap="gray", vmin=0, vmax=255)
    for a in cur.labels:
        if a.kind == "background":
            y0, y1, x0, x1 = a.box
            axes[0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=True,
                                        color="deepskyblue", alpha=0.25))
        else:
            axes[0].plot(a.x, a.y, "+", color="yellow", ms=12, mew=2.5)
    y0, y1, x0, x1 = cur.box
    for ax in axes:
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                               edgecolor="red", lw=2))
        ax.set_axis_off()
    im = axes[1].imshow(cur.uncertainty, cmap="inferno", vmin=0, vmax=float(np.log(2)))
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04, label="entropy (nats)")
    axes[0].set_title(f"case {cur.case_id}, slice {cur.z}: the region asked about (red)")
    axes[1].set_title("MC-dropout entropy of the current model")
    fig.tight_layout()
    return fig


@dataclass
class Chapter:
    """What the chapter shows: the recorded session (``demo``: entropy, first seed), and with
    ``curves`` every strategy x seed run, their curves, the target Dice and the summary."""

    demo: DemoRun
    runs: dict[tuple[str, int], DemoRun]
    frame: Any
    target: float | None
    table: Any


def chapter(ds: Dataset, profile: str, overrides: Mapping[str, Any] | None,
            results_dir: str | Path, seeds: Iterable[int], device: str = "cpu",
            curves: bool = True, annotations_path: str | Path | None = None) -> Chapter:
    """Run (or load) the chapter's simulated annotators; see :class:`Chapter`."""
    seeds = [int(v) for v in seeds]
    if not seeds:
        raise ValueError("label_demo: seeds is empty; give at least one seed")
    if curves:
        runs = compare(ds, profile, overrides, results_dir, seeds, device)
        frame = curves_frame(runs)
        target = target_dice(frame, settings(profile, overrides))
        table = summary(frame, target)
    else:
        runs, frame, target, table = {}, None, None, None
    path = Path(annotations_path or Path(results_dir) / "label_demo" / f"{ds.name}.jsonl")
    demo_run = demo(ds, profile, overrides, results_dir, path, seed=seeds[0], device=device)
    # with curves, this is the entropy run of the first seed again (same configuration,
    # read from the cache), its annotations copied to ``path``
    return Chapter(demo_run, runs, frame, target, table)


def glue_values(ch: Chapter, dataset: str) -> dict[str, Any]:
    """The numbers the chapter's prose cites (``label_demo_<dataset>_<key>``)."""
    last = ch.demo.history[-1]
    out = {"labels": last["labels"], "points": last["points"],
           "backgrounds": last["backgrounds"], "cost_seconds": last["cost_seconds"],
           "test_dice": last.get("test_dice", float("nan")), "cycles": len(ch.demo.history) - 1,
           "warm_dice": ch.demo.history[0].get("test_dice", float("nan"))}
    skipped = "not run (curves=False)"
    for key in ("target_dice", "seeds"):
        out[key] = skipped
    out["verdict"] = (f"{last['labels']} answers in {out['cycles']} cycles reach a held-out "
                      f"Dice of {out['test_dice']:.2f}")
    for st in STRATEGIES:
        for key in ("final_dice", "answers_to_target", "seconds_to_target", "reaching",
                    "on_infection"):
            out[f"{st}_{key}"] = skipped
    if ch.table is not None:
        rows = {r["strategy"]: r for r in ch.table.to_dict("records")}
        out["target_dice"] = ch.target
        out["seeds"] = int(ch.frame["seed"].nunique())
        for st, r in rows.items():
            out[f"{st}_final_dice"] = round(r["final Dice"], 3)
            for key in ("answers", "seconds"):
                v = r[f"{key} to target"]
                out[f"{st}_{key}_to_target"] = ("not reached" if v != v else f"{v:.0f}")
            out[f"{st}_reaching"] = r["seeds reaching target"]
            out[f"{st}_on_infection"] = f"{100 * r['on infection']:.0f} %"
        e, r_ = rows.get("entropy"), rows.get("random")
        if e is not None and r_ is not None:
            better = e["final Dice"] > r_["final Dice"]
            out["verdict"] = (
                f"entropy {'above' if better else 'not above'} random: final Dice "
                f"{e['final Dice']:.2f} vs {r_['final Dice']:.2f} after "
                f"{last['cost_seconds']:.0f} s of clicking")
    return out
