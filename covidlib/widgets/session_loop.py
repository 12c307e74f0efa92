"""The labelling session's parts of the active-learning core (:mod:`covidlib.active_loop`).

A :class:`~covidlib.widgets.session.LabelSession` is P1's region active learning in *step
mode*, the person (or P1's simulated annotator) being the oracle:

* :class:`AnnotationPool`: the units are the K regions of every pool slice,
  ``((case_id, z), box)`` (P1 Sec. 3, Fig. 4); an answer (a click on infection or a
  "background" tag, 3 s each: P1 Sec. 5.3) goes to the annotations file at once
  (:mod:`covidlib.widgets.annotations`), which stays the record of the labels;
* :class:`SessionLearner`: cycle 0 is the initial model (a warm start or untrained, no
  labels used); every later cycle trains a fresh model (from the previous cycle's weights
  with ``warm_start``) on every answer so far with the point loss (P2 Eq. 2);
* :class:`RegionScorer`: the heuristic's scores, the MC-dropout entropy of the mean
  prediction (P1 Eq. 2) of every pool slice, resized to the slice's pixels, reduced per region
  (:func:`covidlib.acquisition.region_scores`); the selection itself (P1's one region per
  image, :func:`covidlib.acquisition.select_regions`, or the random baseline) is
  :func:`pick_regions`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from covidlib import acquisition as acq
from covidlib.active_loop import Learner, Pool, Trained
from covidlib.data.oracle import (
    IGNORE,
    POINT_SECONDS,
    LabelCostLedger,
    RegionLabel,
    apply_region_label,
    unlabelled_map,
)
from covidlib.data.preprocess import resize_image
from covidlib.data.types import Case
from covidlib.models import mc_predict
from covidlib.widgets.annotations import Annotation, AnnotationStore, now
from covidlib.widgets.session_types import Box, CycleResult, Ref, Unit

__all__ = ["AnnotationPool", "RegionScorer", "SessionLearner", "pick_regions", "torch_threads"]

Progress = Callable[[float], None]


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` inside the block (None: unchanged)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class AnnotationPool(Pool):
    """The units of a labelling session, the K regions ``((case_id, z), box)`` of every pool
    slice; the answers are the lines of the annotations file ``store``.

    ``boxes(ref)`` gives a slice's regions (:func:`covidlib.data.oracle.region_grid`),
    ``shape(ref)`` its size in pixels. Calls that change the labels take ``lock``.
    """

    def __init__(self, store: AnnotationStore, refs: Sequence[Ref],
                 boxes: Callable[[Ref], list[Box]], shape: Callable[[Ref], tuple[int, int]],
                 lock: threading.RLock | None = None) -> None:
        self.store, self.refs, self.boxes, self.shape = store, list(refs), boxes, shape
        self.lock = lock or threading.RLock()

    def answered(self) -> set[Unit]:
        """The regions answered so far."""
        return {(a.ref, a.box) for a in self.store}

    def unlabelled(self) -> list[Unit]:
        """Every region not answered yet, in pool order then raster order."""
        done = self.answered()
        return [(ref, box) for ref in self.refs for box in self.boxes(ref)
                if (ref, box) not in done]

    def annotation(self, unit: Unit, answer: RegionLabel) -> Annotation:
        """The annotation that stores ``answer`` for region ``unit`` (checked: a region of
        the pool, not answered yet, a point inside the region)."""
        ref, box = (str(unit[0][0]), int(unit[0][1])), tuple(int(v) for v in unit[1])
        if ref not in set(self.refs):
            raise ValueError(f"label_region: slice {ref} is not in the pool")
        if box not in self.boxes(ref):
            raise ValueError(f"label_region: box {list(box)} is not a region of slice {ref}")
        if (ref, box) in self.answered():
            raise ValueError(f"label_region: region {list(box)} of slice {ref} is answered")
        if answer.kind == "background":
            return Annotation("background", ref[0], ref[1], box, label=0,  # type: ignore[arg-type]
                              time=now())
        if answer.kind == "point" and answer.point is not None:
            y, x, label = answer.point
            ann = Annotation("point", ref[0], ref[1], box, int(y), int(x),  # type: ignore[arg-type]
                             int(label) or 1, now())
            return Annotation.from_json(ann.to_json(), "label_region")  # point inside its box
        raise ValueError(f"label_region: answers are points or background tags, not "
                         f"{answer.kind!r}")

    def label(self, unit: Unit, answer: RegionLabel | Annotation) -> float:
        """Store ``answer`` (a :class:`RegionLabel`, or the :class:`Annotation` made for it)
        for region ``unit`` in the annotations file; 3 s of annotator time (P1 Sec. 5.3)."""
        with self.lock:
            ann = answer if isinstance(answer, Annotation) else self.annotation(unit, answer)
            if isinstance(answer, Annotation) and (ann.ref, ann.box) in self.answered():
                raise ValueError(f"region {list(ann.box)} of slice {ann.ref} is answered")
            self.store.append(ann)
        return POINT_SECONDS

    def undo(self) -> Annotation | None:
        """Remove the last answer (an ``undo`` line in the file)."""
        with self.lock:
            return self.store.pop()

    def label_map(self, ref: Ref) -> np.ndarray:
        """P1's label map of a slice (uint8, original pixels): 1 at clicked points, 0 on
        regions tagged background, :data:`~covidlib.data.oracle.IGNORE` elsewhere."""
        out = unlabelled_map(self.shape(ref))
        labels = [a for a in self.store if a.ref == tuple(ref)]
        for a in labels:
            if a.kind == "background":
                apply_region_label(out, a.box, RegionLabel("background"))
        for a in labels:  # a click wins over an overlapping background tag
            if a.kind == "point":
                out[a.y, a.x] = a.label
        return out

    def ledger(self) -> LabelCostLedger:
        """Annotator seconds: 3 s per point or background tag (P1 Sec. 5.3)."""
        led = LabelCostLedger()
        for a in self.store:
            led.add(a.kind, POINT_SECONDS)
        return led

    def state_dict(self) -> dict[str, Any]:
        """The ids of the answers (the answers themselves are in the annotations file)."""
        return {"annotations": str(self.store.path), "ids": [a.id for a in self.store]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Nothing to load (the file is the record); warns when answers the saved model was
        trained on are no longer in the file (undone or edited since)."""
        have = {a.id for a in self.store}
        gone = [i for i in state.get("ids", []) if i not in have]
        if gone:
            warnings.warn(f"{self.store.path}: {len(gone)} answer(s) the saved model was "
                          "trained on are no longer in the file; the model keeps them until "
                          "the next cycle", stacklevel=2)


class SessionLearner(Learner):
    """The session's model in the loop: cycle 0 is the initial model (``init_state`` or an
    untrained one), later cycles train on every answer with the point loss (P2 Eq. 2).

    ``report(fraction)`` (set per cycle) hears the training's progress (0..0.8).
    """

    def __init__(self, cases: Mapping[str, Case], pool: AnnotationPool, *,
                 model_factory: Callable[[], nn.Module], size: int, epochs: int, lr: float,
                 batch_size: int, seed: int, device: str, warm_start: bool,
                 point_weight: float, init_state: Mapping[str, torch.Tensor] | None,
                 eval_refs: Sequence[Ref], threads: int | None, progress: bool) -> None:
        self.cases, self.pool = cases, pool
        self.model_factory, self.size, self.epochs, self.lr = model_factory, size, epochs, lr
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.warm_start, self.point_weight, self.init_state = warm_start, point_weight, init_state
        self.eval_refs, self.threads, self.progress = list(eval_refs), threads, progress
        self.report: Progress = lambda _f: None
        self.extra_state: Callable[[], dict[str, Any]] = dict
        self.load_extra: Callable[[Mapping[str, Any]], None] = lambda _s: None

    def new_model(self, state: Mapping[str, torch.Tensor] | None = None) -> nn.Module:
        """A fresh model (seeded by ``seed``) with ``state`` loaded, in eval mode."""
        torch.manual_seed(self.seed)
        model = self.model_factory()
        if state is not None:
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise ValueError(f"LabelSession: init_state does not fit the model: {exc}"
                                 ) from exc
        return model.eval()

    def _counts(self) -> dict[str, Any]:
        kinds = [a.kind for a in self.pool.store]
        return {"labels": len(kinds), "points": kinds.count("point"),
                "backgrounds": kinds.count("background"),
                "slices": len({a.ref for a in self.pool.store}),
                "cost_seconds": float(self.pool.ledger().total)}

    def train(self, pool: Pool, cycle: int, previous: Mapping[str, torch.Tensor] | None,
              work_dir: Path | None) -> Trained:
        """Cycle 0: the initial model; later: fit on the labels as they are now (answers
        given while it trains count in the next cycle)."""
        if cycle == 0:
            with self.pool.lock:
                counts = self._counts()
            model = self.new_model(self.init_state)
            weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return Trained(model, weights, {**counts, "train_seconds": 0.0,
                                            "train_loss": math.nan})
        from covidlib.data.torch_datasets import SliceDataset
        from covidlib.engine import fit

        with self.pool.lock:
            refs = sorted({a.ref for a in self.pool.store})
            if not refs:
                raise ValueError("train_cycle: no labels yet; click on infection or tag a "
                                 "region background first")
            points = {r: self.pool.label_map(r) for r in refs}
            counts = self._counts()
        data = SliceDataset(self.cases, refs, size=self.size, points=points, progress=False)
        torch.manual_seed(self.seed)
        model = self.model_factory()
        if self.warm_start and previous is not None and (cycle > 1 or self.init_state is not None):
            model.load_state_dict(previous)
        self.report(0.0)
        t0 = time.perf_counter()
        with torch_threads(self.threads):
            res = fit(model, self._loss(), data, None, epochs=self.epochs, lr=self.lr,
                      batch_size=min(self.batch_size, len(data)), device=self.device,
                      seed=self.seed, progress=self.progress,
                      on_epoch_end=lambda e, _m: self.report(0.8 * min(e, self.epochs)
                                                             / self.epochs))
        seconds = time.perf_counter() - t0
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return Trained(model.eval(), weights, {**counts, "train_seconds": seconds,
                                               "train_loss": float(res.history[-1]["train_loss"])})

    def _loss(self) -> nn.Module:
        """P2 Eq. 2 (mean over labelled pixels); clicks weighted by ``point_weight``."""
        from covidlib.engine import supervised_loss
        from covidlib.losses.batch import PointBatchLoss

        if self.point_weight == 1.0:
            return PointBatchLoss()
        weight = torch.tensor([1.0, self.point_weight], device=self.device)
        return supervised_loss(nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE),
                               target_key="points")

    def scores(self, model: nn.Module, refs: Sequence[Ref]) -> dict[str, float]:
        """Dice, IoU, PPV, sensitivity, specificity of ``model`` on slices ``refs``."""
        from covidlib.data.torch_datasets import SliceDataset
        from covidlib.engine import evaluate

        data = SliceDataset(self.cases, list(refs), size=self.size, progress=False)
        with torch_threads(self.threads):
            out = evaluate(model, data, self.device)
        return {k: float(out[k]) for k in ("dice", "iou", "ppv", "sens", "spec")}

    def evaluate(self, trained: Trained, pool: Pool, cycle: int) -> dict[str, Any]:
        """The cycle's :class:`CycleResult` as a record, scored on ``eval_refs`` if any."""
        info = trained.info
        result = CycleResult(cycle, info["labels"], info["points"], info["backgrounds"],
                             info["slices"], info["cost_seconds"], info["train_seconds"],
                             info["train_loss"])
        if self.eval_refs:
            assert trained.model is not None
            result.scores = self.scores(trained.model, self.eval_refs)
        return result.to_dict()

    def extras(self) -> dict[str, Any]:
        return self.extra_state()

    def load_extras(self, state: Mapping[str, Any]) -> None:
        self.load_extra(state)


class RegionScorer:
    """The heuristic's scores (P1 Sec. 3): the MC-dropout entropy of the mean prediction (P1
    Eq. 2, ``n_mc`` samples, seeded by the cycle) of every slice of ``images`` (the pool at the
    model's size), resized to the slice's pixels, and each region's score
    (:func:`covidlib.acquisition.region_scores`, ``reduce`` of its pixels)."""

    def __init__(self, images: Any, refs: Sequence[Ref], shape: Callable[[Ref], tuple[int, int]],
                 boxes: Callable[[Ref], list[Box]], *, n_mc: int, seed: int, reduce: str,
                 device: str, threads: int | None, progress: bool, batch: int = 16) -> None:
        self.images, self.refs, self.shape, self.boxes = images, list(refs), shape, boxes
        self.n_mc, self.seed, self.reduce, self.device = n_mc, seed, reduce, device
        self.threads, self.progress, self.batch = threads, progress, batch

    def __call__(self, model: nn.Module, cycle: int, on_progress: Progress | None = None
                 ) -> tuple[dict[Ref, np.ndarray], dict[Ref, np.ndarray]]:
        """``(uncertainty maps, region scores)`` per slice of the pool."""
        uncertainty: dict[Ref, np.ndarray] = {}
        scores: dict[Ref, np.ndarray] = {}
        model.to(self.device)
        bs, seed = self.batch, self.seed + 7919 * cycle
        with torch_threads(self.threads):
            for start in tqdm(range(0, len(self.refs), bs), desc="uncertainty", unit="batch",
                              disable=not self.progress):
                idx = range(start, min(start + bs, len(self.refs)))
                x = torch.stack([self.images[i]["image"] for i in idx]).to(self.device)
                samples = mc_predict(model, x, self.n_mc, seed=seed + start)
                ent = acq.entropy_of_mean(samples).float().cpu().numpy()
                for i, e in zip(idx, ent, strict=True):
                    ref = self.refs[i]
                    full = resize_image(e, self.shape(ref)).clip(min=0)
                    uncertainty[ref] = full.astype(np.float32)
                    scores[ref] = acq.region_scores(full, self.boxes(ref),
                                                    reduce=self.reduce).numpy()
                if on_progress is not None:
                    on_progress(min(1.0, (start + bs) / len(self.refs)))
        return uncertainty, scores


def pick_regions(scores: np.ndarray, excluded: np.ndarray, n: int, strategy: str,
                 rng: np.random.Generator) -> list[tuple[int, int]]:
    """P1's selection (Sec. 3): ``n`` images, one region each, ``(image, region)`` pairs;
    ``entropy``: the best-scored regions not ``excluded``
    (:func:`covidlib.acquisition.select_regions`), ``random``: random images and regions
    (:func:`covidlib.acquisition.select_random_regions`, draws from ``rng``)."""
    if strategy == "random":
        return acq.select_random_regions(excluded, n, rng)
    return acq.select_regions(scores, n, excluded)
