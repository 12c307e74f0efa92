"""Headless region-based active-learning session of P1, driven by a person or by the oracle.

A :class:`LabelSession` runs P1's region active learning (Sec. 3, Fig. 4) on the one
active-learning core (:class:`covidlib.active_loop.ActiveLoop`) in *step mode*, the person
being the oracle. Its parts (:mod:`covidlib.widgets.session_loop`): the pool is the K equal
rectangles of every CT slice, the answers living in an annotations file
(:mod:`covidlib.widgets.annotations`, written at once); the heuristic is the MC-dropout
entropy of every region (P1 Eq. 2, :mod:`covidlib.acquisition`) and P1's one-region-per-image
rule; each answer is a click on the infection (a point label) or a "background" tag for the
whole region, 3 s of annotator time either way (P1 Sec. 5.3). :meth:`LabelSession.train_cycle`
is one step of the loop: retrain on every answer so far with the point loss (P2 Eq. 2), score
the pool, propose the next regions. What is left here is the person's side: the question on
screen, skip, undo, a cycle in a background thread, the model's view of a slice.

With ``state_dir`` the loop's state (the model, the cycle records, the questions) is saved
after every cycle (:meth:`covidlib.active_loop.ActiveLoop.save`) and a session opened again on
it resumes there; without it, opening a session on an existing file restores the answers and
the proposals come from the initial model again.

:class:`covidlib.widgets.view.LabelWidget` is the same session with a canvas;
:func:`simulate` answers the queue with :class:`MaskOracle` (P1's simulated annotator,
:func:`covidlib.data.oracle.region_label`) so experiments and tests run without a person.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from covidlib.active_loop import STATE_NAME, ActiveLoop, Pool, Selection, Trained
from covidlib.active_loop import Query as LoopQuery
from covidlib.data.errors import DataError
from covidlib.data.oracle import IGNORE, LabelCostLedger, RegionLabel, region_grid
from covidlib.data.preprocess import LUNG_WINDOW
from covidlib.data.types import Case
from covidlib.widgets.annotations import Annotation, AnnotationStore, now
from covidlib.widgets.session_loop import (
    AnnotationPool,
    RegionScorer,
    SessionLearner,
    pick_regions,
    torch_threads,
)
from covidlib.widgets.session_model import (
    check_settings,
    choose_pool,
    gray_slices,
    pretrain,
    small_unet,
)
from covidlib.widgets.session_sim import MaskOracle, simulate
from covidlib.widgets.session_types import (
    REGION_MODES,
    STRATEGIES,
    Box,
    Current,
    CycleResult,
    Query,
    Ref,
)

__all__ = [
    "REGION_MODES",
    "STRATEGIES",
    "Current",
    "CycleResult",
    "LabelSession",
    "MaskOracle",
    "Query",
    "choose_pool",
    "pretrain",
    "simulate",
    "small_unet",
]

OPEN_ENDED = 10**9
"""The loop's last cycle: a person decides when to stop."""


class LabelSession:
    """Region-based active learning on a pool of slices (P1), one region at a time.

    Args:
        cases: the loaded cases (``Dataset.cases()``).
        annotations_path: the JSON-lines file every answer is written to (created if absent,
            restored if present).
        model_factory: builds a fresh model (logits ``(B, 2, S, S)`` from ``(B, 3, S, S)``)
            with dropout; default :func:`small_unet`.
        n_regions: K, regions per slice (a perfect square; P1 uses 64 on 352 px slices).
        n_mc: I, MC-dropout samples per slice (P1 Eq. 2).
        slices: the pool, ``(case_id, z)`` pairs (default: every slice of ``cases``).
        size: side the slices are resized to for the model (P1: 352).
        regions_per_cycle: images asked about per cycle, one region each (P1: 5).
        epochs, lr, batch_size: training of each cycle (Adam; P1: lr 1e-4, 40 epochs).
        eval_slices: slices (with masks) scored after each cycle (Dice etc.).
        warm_start: each cycle continues from the previous cycle's weights (P1 retrains
            "until convergence" on every new batch of labels); False: from scratch.
        reduce: region score from its pixels, ``"max"`` (P1 "Model Training") or ``"mean"``
            (P1 Fig. 4); see :func:`covidlib.acquisition.region_scores`.
        threads: torch CPU threads while scoring and training (restored afterwards); one
            thread is as fast for the small model and does not stall on a busy machine.
            ``None`` keeps torch's setting.
        dataset: name stored in the annotations file (a file of another dataset is refused).
        seed: model initialisation, training order and MC-dropout masks.
        regions: ``"body"`` (default) asks only about regions overlapping the body: the
            case's lung mask when it has one on that slice, else :func:`body_mask` of the
            image (at least ``body_fraction`` of the region's pixels); ``"grid"`` asks about
            every region of P1's grid (the reproduction setting).
        strategy: ``"entropy"`` (P1's rule on MC-dropout entropy) or ``"random"`` (P1's
            random baseline: random images, a random allowed region of each).
        point_weight: weight of a click on infection against a background pixel in the
            point loss (1: P2 Eq. 2 as published; a background tag labels a whole region,
            a click one pixel).
        init_state: weights to start from (a warm start, e.g. :func:`pretrain` on other
            volumes), so the first questions are already informed; ``None``: untrained.
        state_dir: folder of the loop's saved state (model, cycle records, questions),
            written after every cycle and resumed when the session opens; ``None``: none.

    Attributes: ``loop`` (the :class:`~covidlib.active_loop.ActiveLoop`), ``pool``,
    ``learner``, ``model`` (the last cycle's), ``cycle`` (its number; 0: the initial model),
    ``uncertainty`` and ``scores`` (per slice, from that model), ``records`` (one per cycle).
    """


    def __init__(self, cases: Sequence[Case] | Mapping[str, Case],
                 annotations_path: str | Path,
                 model_factory: Callable[[], nn.Module] | None = None,
                 n_regions: int = 16, n_mc: int = 8, *,
                 slices: Iterable[Ref] | None = None, size: int = 64,
                 regions_per_cycle: int = 5, epochs: int = 30, lr: float = 1e-3,
                 batch_size: int = 4, eval_slices: Iterable[Ref] | None = None,
                 dataset: str = "", seed: int = 0, device: str = "cpu",
                 warm_start: bool = True, reduce: str = "max",
                 window: tuple[float, float] = LUNG_WINDOW, threads: int | None = 1,
                 progress: bool = False, regions: str = "body", strategy: str = "entropy",
                 init_state: Mapping[str, torch.Tensor] | None = None,
                 body_fraction: float = 0.05, point_weight: float = 1.0,
                 state_dir: str | Path | None = None):
        from covidlib.data.torch_datasets import SliceDataset
        from covidlib.engine import resolve_device

        self.cases = dict(cases) if isinstance(cases, Mapping) else {c.case_id: c for c in cases}
        if not self.cases:
            raise ValueError("LabelSession: no cases given")
        check_settings(n_mc=n_mc, size=size, regions_per_cycle=regions_per_cycle,
                        epochs=epochs, batch_size=batch_size, reduce=reduce, regions=regions,
                        strategy=strategy, point_weight=point_weight)
        if slices is None:
            slices = [(c, z) for c, case in self.cases.items() for z in range(case.n_slices)]
        self.refs: list[Ref] = [(str(c), int(z)) for c, z in slices]
        if not self.refs:
            raise ValueError("LabelSession: the pool of slices is empty")
        self.n_regions, self.n_mc, self.size = n_regions, n_mc, size
        self.regions_per_cycle, self.epochs, self.lr = regions_per_cycle, epochs, float(lr)
        self.batch_size, self.seed = batch_size, int(seed)
        self.device = str(resolve_device(device))  # "auto": CUDA when present
        self.progress, self.threads, self.warm_start = progress, threads, warm_start
        self.reduce, self.regions, self.strategy = reduce, regions, strategy
        self.body_fraction, self.point_weight = float(body_fraction), float(point_weight)
        self.eval_refs = [(str(c), int(z)) for c, z in (eval_slices or [])]
        self.warm = init_state is not None
        self._rng = np.random.default_rng(self.seed)  # the random strategy's draws
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self.progress_fraction = 0.0
        self.last_error: BaseException | None = None

        images = SliceDataset(self.cases, self.refs, size=size, window=window,
                              progress=False)  # checks every reference
        self._gray = gray_slices(self.cases, self.refs, window)
        self._boxes: dict[tuple[int, int], list[Box]] = {}
        self.allowed: dict[Ref, np.ndarray] = {ref: self._allowed(ref) for ref in self.refs}
        self.store = AnnotationStore(annotations_path, {"dataset": dataset,
                                                        "n_regions": n_regions})
        self._check_restored()
        self.restored = len(self.store)

        self.pool = AnnotationPool(self.store, self.refs, self.boxes, self._shape, self._lock)
        self.learner = SessionLearner(
            self.cases, self.pool, model_factory=model_factory or small_unet, size=size,
            epochs=epochs, lr=self.lr, batch_size=batch_size, seed=self.seed,
            device=self.device, warm_start=warm_start, point_weight=self.point_weight,
            init_state=init_state, eval_refs=self.eval_refs, threads=threads,
            progress=progress)
        self.learner.extra_state = self._extra_state
        self.learner.load_extra = self._load_extra_state
        self.scorer = RegionScorer(images, self.refs, self._shape, self.boxes, n_mc=n_mc,
                                   seed=self.seed, reduce=reduce, device=self.device,
                                   threads=threads, progress=progress)
        config = self._identity(dataset, model_factory or small_unet, window)
        self.loop = ActiveLoop(self.pool, self.learner, self._propose, None,
                               per_cycle=regions_per_cycle, cycles=OPEN_ENDED, config=config,
                               checkpoint_dir=state_dir)
        self.cycle = 0
        self.model: nn.Module
        self.uncertainty: dict[Ref, np.ndarray] = {}
        self.scores: dict[Ref, np.ndarray] = {}
        self._skipped: set[tuple[Ref, Box]] = set()
        self._queue: list[Query] = []
        self._keep_current = False
        self._on_scores: Callable[[float], None] | None = None
        if state_dir is not None and (Path(state_dir) / STATE_NAME).exists():
            self._resume()
        else:
            self.loop.step()  # cycle 0: the initial model proposes the first regions
            self.model = self.loop.trained.model  # type: ignore[union-attr,assignment]
            if not self.scores:  # every region answered: no proposal, the maps still shown
                self.uncertainty, self.scores = self.scorer(self.model, 0)

    def _identity(self, dataset: str, factory: Callable[[], nn.Module],
                  window: tuple[float, float]) -> dict[str, Any]:
        """What a saved loop state must have been made with (else it is refused)."""
        return {"format": "covidlib.widgets.session/1", "dataset": dataset,
                "pool": [list(r) for r in self.refs], "n_regions": self.n_regions,
                "size": self.size, "n_mc": self.n_mc, "window": list(window),
                "regions_per_cycle": self.regions_per_cycle, "epochs": self.epochs,
                "lr": self.lr, "batch_size": self.batch_size, "seed": self.seed,
                "reduce": self.reduce, "regions": self.regions,
                "body_fraction": self.body_fraction, "strategy": self.strategy,
                "point_weight": self.point_weight, "warm_start": self.warm_start,
                "warm": self.warm, "model": getattr(factory, "__qualname__", repr(factory))}

    def _check_restored(self) -> None:
        """Every answer of an existing annotations file is a region of this pool."""
        pool = set(self.refs)
        for i, ann in enumerate(self.store):
            where = f"{self.store.path}: label {i + 1}"
            if ann.ref not in pool:
                raise DataError(where, f"slice {ann.ref} is not in this session's pool")
            if ann.box not in self.boxes(ann.ref):
                raise DataError(where, f"box {list(ann.box)} is not a region of the "
                                f"{self.n_regions}-region grid of slice {ann.ref}")

    def _allowed(self, ref: Ref) -> np.ndarray:
        """Regions of slice ``ref`` the session may ask about (see ``regions``)."""
        boxes = self.boxes(ref)
        if self.regions == "grid":
            return np.ones(len(boxes), dtype=bool)
        from covidlib.widgets.geometry import body_mask, body_regions

        lung = self.cases[ref[0]].lung
        mask = None if lung is None else np.asarray(lung[ref[1]]) > 0
        if mask is None or not mask.any():
            mask = body_mask(self._gray[ref])
        ok = body_regions(mask, boxes, self.body_fraction)
        return ok if ok.any() else body_regions(mask, boxes, 0.0)

    def _shape(self, ref: Ref) -> tuple[int, int]:
        return self._gray[ref].shape  # type: ignore[return-value]

    # ----------------------------------------------------------------- bookkeeping
    def boxes(self, ref: Ref) -> list[Box]:
        """The K regions of slice ``ref`` (:func:`covidlib.data.oracle.region_grid`)."""
        shape = self._gray[ref].shape
        if shape not in self._boxes:
            try:
                self._boxes[shape] = region_grid(shape, self.n_regions)
            except ValueError as exc:
                raise ValueError(f"slice {ref}: {exc}") from exc
        return self._boxes[shape]

    @property
    def annotations(self) -> list[Annotation]:
        """Every answer so far, oldest first."""
        return list(self.store)

    def labels_on(self, ref: Ref) -> tuple[Annotation, ...]:
        """The answers given on slice ``ref``."""
        return tuple(a for a in self.store if a.ref == tuple(ref))

    def label_map(self, ref: Ref) -> np.ndarray:
        """P1's label map of a slice (:meth:`AnnotationPool.label_map`)."""
        return self.pool.label_map(ref)

    def ledger(self) -> LabelCostLedger:
        """Annotator seconds: 3 s per point or background tag (P1 Sec. 5.3)."""
        return self.pool.ledger()

    @property
    def records(self) -> list[dict[str, Any]]:
        """One record per cycle of the loop (cycle 0: the initial model, before any
        training), as :meth:`CycleResult.to_dict` writes it."""
        return copy.deepcopy(self.loop.records)

    @property
    def history(self) -> list[CycleResult]:
        """The training cycles so far (cycle 1 on)."""
        return [CycleResult.from_dict(r) for r in self.loop.records if r["cycle"] > 0]

    # ------------------------------------------------------------- the heuristic
    def _propose(self, trained: Trained, pool: Pool, n: int, cycle: int) -> Selection:
        """The loop's heuristic: score the pool with the cycle's model, then (under the lock:
        answers may arrive meanwhile) queue ``n`` regions by P1's rule. The question on
        screen stays first while a background cycle runs (``keep_current``)."""
        assert trained.model is not None
        unc, scores = self.scorer(trained.model, cycle, self._on_scores)
        with self._lock:
            self.model, self.uncertainty, self.scores = trained.model, unc, scores
            self.cycle = cycle
            head = self._queue[0] if self._keep_current and self._queue else None
            self._skipped.clear()
            keep = head is not None and head.unit not in self.pool.answered()
            self._queue = [head] if keep else []  # type: ignore[list-item]
            self._refill(n)
            return Selection([LoopQuery(q.unit, q.score) for q in self._queue])

    def _refill(self, n: int) -> None:
        """Queue ``n`` more regions by P1's rule (:func:`pick_regions`; skipped ones last)."""
        taken = self.pool.answered() | {q.unit for q in self._queue}
        scores = np.stack([self.scores[ref] for ref in self.refs])
        outside = np.stack([~self.allowed[ref] for ref in self.refs])
        for exclude in (taken | self._skipped, taken):
            excluded = outside | np.array([[(ref, b) in exclude for b in self.boxes(ref)]
                                           for ref in self.refs], dtype=bool)
            picks = pick_regions(scores, excluded, n, self.strategy, self._rng)
            if picks:
                if exclude is taken:  # every region left was skipped: ask them again
                    self._skipped.clear()
                for i, k in picks:
                    ref = self.refs[i]
                    self._queue.append(Query(ref[0], ref[1], self.boxes(ref)[k],
                                             float(scores[i, k])))
                return

    def _advance(self) -> None:
        if self._queue:
            self._queue.pop(0)
        if not self._queue:  # the proposals are used up: more from the same model
            self._refill(self.regions_per_cycle)

    def _extra_state(self) -> dict[str, Any]:
        return {"session_rng": json.dumps(self._rng.bit_generator.state)}

    def _load_extra_state(self, state: Mapping[str, Any]) -> None:
        if "session_rng" in state:
            self._rng.bit_generator.state = json.loads(state["session_rng"])

    # --------------------------------------------------------------- questions
    @property
    def queue(self) -> list[Query]:
        """The regions proposed, the current one first."""
        return list(self._queue)

    def current(self) -> Current | None:
        """The region asked about now, or ``None`` once every region of the pool is answered."""
        with self._lock:
            if not self._queue:
                return None
            q = self._queue[0]
            return Current(q.case_id, q.z, q.box, q.score, self._gray[q.ref],
                           self.uncertainty[q.ref], self.labels_on(q.ref))

    def _need_current(self, what: str) -> Query:
        if not self._queue:
            raise ValueError(f"{what}: every region of the pool is answered")
        return self._queue[0]

    def click(self, y: int, x: int, label: int = 1) -> Annotation:
        """A point on infection at image pixel ``(y, x)`` of the current region; saved at once,
        then the next region comes up."""
        with self._lock:
            q = self._need_current("click")
            for name, v in (("y", y), ("x", x), ("label", label)):
                if isinstance(v, bool) or not isinstance(v, int | np.integer):
                    raise ValueError(f"click: {name}={v!r} must be an integer")
            y, x, label = int(y), int(x), int(label)
            y0, y1, x0, x1 = q.box
            if not (y0 <= y < y1 and x0 <= x < x1):
                raise ValueError(f"click ({y}, {x}) is outside the region asked about: rows "
                                 f"{y0}..{y1 - 1}, columns {x0}..{x1 - 1} of slice {q.ref}")
            if not 0 < label < IGNORE:
                raise ValueError(f"click: label {label} must be in 1..{IGNORE - 1}")
            ann = Annotation("point", q.case_id, q.z, q.box, y, x, label, now())
            self.loop.answer(q.unit, ann)
            self._advance()
            return ann

    def background(self) -> Annotation:
        """Tag the current region "background" (no infection in it); saved at once."""
        with self._lock:
            q = self._need_current("background")
            ann = Annotation("background", q.case_id, q.z, q.box, label=0, time=now())
            self.loop.answer(q.unit, ann)
            self._advance()
            return ann

    def answer(self, answer: RegionLabel) -> Annotation:
        """Answer the current region with the oracle's ``answer``: a point (a click on
        infection, label 1 as the widget's) or a background tag."""
        if answer.kind == "background":
            return self.background()
        if answer.kind == "point" and answer.point is not None:
            return self.click(int(answer.point[0]), int(answer.point[1]))
        raise ValueError(f"answer: the widget takes points and background tags, not "
                         f"{answer.kind!r}")

    def label_region(self, ref: Ref, box: Box, answer: RegionLabel) -> Annotation:
        """Record ``answer`` (a point or "background") for any region of the pool, e.g. the
        fully labelled images of P1's first cycle; the queue skips answered regions."""
        with self._lock:
            unit = ((str(ref[0]), int(ref[1])), tuple(int(v) for v in box))
            ann = self.pool.annotation(unit, answer)  # type: ignore[arg-type]
            self.loop.answer(unit, ann)
            self._queue = [q for q in self._queue if q.unit != unit]
            if not self._queue:
                self._refill(self.regions_per_cycle)
            return ann

    def undo(self) -> Annotation | None:
        """Remove the last answer (from the file too) and ask about its region again."""
        with self._lock:
            ann = self.pool.undo()
            if ann is not None:
                score = float(self.scores[ann.ref][self.boxes(ann.ref).index(ann.box)])
                self._queue.insert(0, Query(ann.case_id, ann.z, ann.box, score))
            return ann

    def next(self) -> Query | None:
        """Skip the current region (it is asked again once nothing else is left)."""
        with self._lock:
            if self._queue:
                self._skipped.add(self._queue[0].unit)
            self._advance()
            return self._queue[0] if self._queue else None

    # --------------------------------------------------------------- training
    @property
    def training(self) -> bool:
        """True while a background cycle (:meth:`start_cycle`) runs."""
        return self._thread is not None and self._thread.is_alive()

    def train_cycle(self, keep_current: bool = False,
                    on_progress: Callable[[float], None] | None = None) -> CycleResult:
        """One step of the loop (:meth:`covidlib.active_loop.ActiveLoop.step`): train on
        every answer so far (P2 Eq. 2 point loss), re-score the pool and propose the next
        regions; the loop's state is saved when the session has a ``state_dir``. CPU seconds
        with :func:`small_unet` at 64 px. The result depends only on the labels, the settings
        and the previous cycles (deterministic on CPU).

        Answers given while it trains (from another thread) are kept: training uses the
        labels as they were at its start and the new ones count in the next cycle.
        ``keep_current``: the region shown now stays the current question (the widget's
        background cycle); ``on_progress(fraction)`` reports 0..1.
        """
        report = on_progress or (lambda _f: None)
        if self.loop.done and self.pool.unlabelled():
            self.loop.done = False  # an undo after the last cycle: the loop goes on
        if self.loop.done:
            raise ValueError("train_cycle: every region of the pool is answered and the model "
                             "was trained on all of them")
        self.learner.report, self._keep_current = report, keep_current
        self._on_scores = lambda f: report(0.8 + 0.2 * f)
        try:
            self.loop.step()
        finally:
            self.learner.report, self._keep_current, self._on_scores = (
                lambda _f: None), False, None
        model = self.loop.trained.model  # type: ignore[union-attr]
        assert model is not None
        if self.loop.done:  # the last cycle proposes nothing; its maps are still shown
            unc, scores = self.scorer(model, self.loop.cycle - 1)
        with self._lock:
            self.model, self.cycle = model, self.loop.cycle - 1
            if self.loop.done:
                self.uncertainty, self.scores, self._queue = unc, scores, []
            self.save()
        report(1.0)
        return CycleResult.from_dict(self.loop.records[-1])

    def save(self) -> None:
        """Write the loop's state to ``state_dir`` (nothing without one): the model, the
        records and the questions now queued (answers are in the annotations file)."""
        with self._lock:
            self.loop.pending = [LoopQuery(q.unit, q.score) for q in self._queue]
            self.loop.save()

    def _resume(self) -> None:
        """Continue from the saved state: its model, cycle, records and questions."""
        self.loop.resume()
        assert self.loop.weights is not None
        model = self.learner.new_model(self.loop.weights)
        self.loop.trained = Trained(model, self.loop.weights)
        self.model, self.cycle = model, self.loop.cycle - 1
        self.uncertainty, self.scores = self.scorer(model, self.cycle)
        answered = self.pool.answered()
        self._queue = [Query.from_unit(q.unit, q.score) for q in self.loop.pending
                       if q.unit not in answered]
        if not self._queue:
            self._refill(self.regions_per_cycle)

    def start_cycle(self, on_progress: Callable[[float], None] | None = None,
                    on_done: Callable[[CycleResult | None, BaseException | None], None]
                    | None = None) -> threading.Thread:
        """Run :meth:`train_cycle` in a background thread (the annotator keeps labelling;
        the current question stays). ``on_done(result, error)`` is called from that thread.
        A second call while a cycle runs raises ``ValueError``."""
        with self._lock:
            if self.training:
                raise ValueError("start_cycle: a training cycle is already running")
            if not len(self.store):
                raise ValueError("train_cycle: no labels yet; click on infection or tag a "
                                 "region background first")

            def progress(f: float) -> None:
                self.progress_fraction = float(f)
                if on_progress is not None:
                    on_progress(float(f))

            def work() -> None:
                result, error = None, None
                try:
                    result = self.train_cycle(keep_current=True, on_progress=progress)
                except BaseException as exc:  # reported to on_done, kept in last_error
                    error = exc
                self.last_error = error
                if on_done is not None:
                    on_done(result, error)

            self.progress_fraction, self.last_error = 0.0, None
            self._thread = threading.Thread(target=work, name="covidlib-label-cycle",
                                            daemon=True)
            self._thread.start()
            return self._thread

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background cycle to end; True when none is running any more."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.training

    def restore_model(self, state: Mapping[str, torch.Tensor], cycle: int) -> None:
        """Load the weights a previous run ended with (after ``cycle`` cycles), re-score the
        pool and propose regions exactly as that run did at its end."""
        if isinstance(cycle, bool) or not isinstance(cycle, int) or cycle < 0:
            raise ValueError(f"restore_model: cycle={cycle!r} must be an integer >= 0")
        model = self.learner.new_model(state)
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        trained = Trained(model, weights)
        with self._lock:
            self.loop.weights, self.loop.trained, self.loop.cycle = weights, trained, cycle + 1
            self._queue = []
        self.loop.pending = self._propose(trained, self.pool, self.regions_per_cycle,
                                          cycle).queries

    def predict(self, ref: Ref) -> np.ndarray:
        """The current model's infection probability on slice ``ref`` (any slice of the
        loaded cases), ``(size, size)`` float32, dropout off."""
        from covidlib.data.torch_datasets import SliceDataset

        item = SliceDataset(self.cases, [ref], size=self.size, progress=False)[0]
        with torch_threads(self.threads), torch.no_grad():
            model = self.model.to(self.device).eval()
            logits = model(item["image"][None].to(self.device))
        return torch.softmax(logits.float(), 1)[0, 1].cpu().numpy().astype(np.float32)

    def evaluate(self, refs: Iterable[Ref]) -> dict[str, float]:
        """Dice, IoU, PPV, sensitivity, specificity of the current model on ``refs``."""
        return self.learner.scores(self.model, list(refs))

