"""Headless region-based active-learning session of P1, driven by a person or by the oracle.

A :class:`LabelSession` holds a pool of CT slices, each cut into ``n_regions`` equal
rectangles (P1 Sec. 3, Fig. 4). The model (a small U-Net with dropout) scores every region
by the MC-dropout entropy of its pixels (P1 Eq. 2 and the entropy of the mean estimator), and
P1's selection rule turns the scores into a queue of regions to ask about (all three from
:mod:`covidlib.acquisition`, the code of the P1 chapters); each answer is
a click on the infection (a point label) or a "background" tag for the whole region, 3 s of
annotator time either way (P1 Sec. 5.3). :meth:`LabelSession.train_cycle` retrains on every
answer so far with the point loss (P2 Eq. 2, unlabelled pixels ignored) and proposes the next
regions. Answers go to an annotations file at once (:mod:`covidlib.widgets.annotations`);
opening a session on an existing file restores them (the proposals are recomputed: the model
is retrained by the next :meth:`~LabelSession.train_cycle`, not stored).

:class:`covidlib.widgets.view.LabelWidget` is the same session with a canvas;
:func:`simulate` answers the queue with :class:`MaskOracle` (P1's simulated annotator,
:func:`covidlib.data.oracle.region_label`) so experiments and tests run without a person.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from covidlib import acquisition as acq
from covidlib.data.errors import DataError
from covidlib.data.oracle import (
    IGNORE,
    POINT_SECONDS,
    LabelCostLedger,
    RegionLabel,
    apply_region_label,
    region_grid,
    unlabelled_map,
)
from covidlib.data.preprocess import LUNG_WINDOW, resize_image, to_uint8
from covidlib.data.types import Case
from covidlib.models import mc_predict
from covidlib.widgets.annotations import Annotation, AnnotationStore, now
from covidlib.widgets.session_model import choose_pool, pretrain, small_unet
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
                 body_fraction: float = 0.05, point_weight: float = 1.0):
        from covidlib.data.torch_datasets import SliceDataset

        self.cases = dict(cases) if isinstance(cases, Mapping) else {c.case_id: c for c in cases}
        if not self.cases:
            raise ValueError("LabelSession: no cases given")
        for name, value, lo in (("n_mc", n_mc, 1), ("size", size, 8),
                                ("regions_per_cycle", regions_per_cycle, 1),
                                ("epochs", epochs, 1), ("batch_size", batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"LabelSession: {name}={value!r} must be an integer >= {lo}")
        if slices is None:
            slices = [(c, z) for c, case in self.cases.items() for z in range(case.n_slices)]
        self.refs: list[Ref] = [(str(c), int(z)) for c, z in slices]
        if not self.refs:
            raise ValueError("LabelSession: the pool of slices is empty")
        self.model_factory = model_factory or small_unet
        self.n_regions, self.n_mc, self.size = n_regions, n_mc, size
        self.regions_per_cycle, self.epochs, self.lr = regions_per_cycle, epochs, float(lr)
        from covidlib.engine import resolve_device

        self.batch_size, self.seed = batch_size, int(seed)
        self.device = str(resolve_device(device))  # "auto": CUDA when present
        self.progress = progress
        self.threads = threads
        self.warm_start = warm_start
        if reduce not in acq.REDUCTIONS:
            raise ValueError(f"LabelSession: reduce={reduce!r}; choose one of {acq.REDUCTIONS}")
        self.reduce = reduce
        if regions not in REGION_MODES:
            raise ValueError(f"LabelSession: regions={regions!r}; choose one of {REGION_MODES}")
        if strategy not in STRATEGIES:
            raise ValueError(f"LabelSession: strategy={strategy!r}; choose one of {STRATEGIES}")
        self.regions, self.strategy, self.body_fraction = regions, strategy, float(body_fraction)
        if not float(point_weight) > 0:
            raise ValueError(f"LabelSession: point_weight={point_weight!r} must be > 0")
        self.point_weight = float(point_weight)
        self._rng = np.random.default_rng(self.seed)
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self.progress_fraction = 0.0
        self.last_error: BaseException | None = None
        self.eval_refs = [(str(c), int(z)) for c, z in (eval_slices or [])]

        self._pool = SliceDataset(self.cases, self.refs, size=size, window=window,
                                  progress=False)  # checks every reference
        self._gray: dict[Ref, np.ndarray] = {}
        for cid in dict.fromkeys(c for c, _ in self.refs):
            u8 = to_uint8(self.cases[cid], window=window)
            for c, z in self.refs:
                if c == cid:
                    self._gray[(c, z)] = u8[z]
        self._boxes: dict[tuple[int, int], list[Box]] = {}
        self.allowed: dict[Ref, np.ndarray] = {}
        for ref in self.refs:
            self.allowed[ref] = self._allowed(ref)  # also checks that the grid fits

        self.store = AnnotationStore(annotations_path, {"dataset": dataset,
                                                        "n_regions": n_regions})
        pool = set(self.refs)
        for i, ann in enumerate(self.store):
            where = f"{self.store.path}: label {i + 1}"
            if ann.ref not in pool:
                raise DataError(where, f"slice {ann.ref} is not in this session's pool")
            if ann.box not in self.boxes(ann.ref):
                raise DataError(where, f"box {list(ann.box)} is not a region of the "
                                f"{n_regions}-region grid of slice {ann.ref}")
        self.restored = len(self.store)
        self.cycle = 0
        self.history: list[CycleResult] = []
        self._skipped: set[tuple[Ref, Box]] = set()
        self._queue: list[Query] = []
        torch.manual_seed(self.seed)
        self.model = self.model_factory()
        self.warm = init_state is not None
        if init_state is not None:
            try:
                self.model.load_state_dict(init_state)
            except RuntimeError as exc:
                raise ValueError(f"LabelSession: init_state does not fit the model: {exc}"
                                 ) from exc
        self.model.eval()
        with self._threads():
            self._score_pool()
        self._refill()

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

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        before = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

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
        """P1's label map of a slice (uint8, original pixels): 1 at clicked points, 0 on
        regions tagged background, :data:`~covidlib.data.oracle.IGNORE` elsewhere."""
        out = unlabelled_map(self._gray[ref].shape)
        for a in self.labels_on(ref):
            if a.kind == "background":
                apply_region_label(out, a.box, RegionLabel("background"))
        for a in self.labels_on(ref):  # a click wins over an overlapping background tag
            if a.kind == "point":
                out[a.y, a.x] = a.label
        return out

    def ledger(self) -> LabelCostLedger:
        """Annotator seconds: 3 s per point or background tag (P1 Sec. 5.3)."""
        led = LabelCostLedger()
        for a in self.store:
            led.add(a.kind, POINT_SECONDS)
        return led

    # ------------------------------------------------------------------ scoring
    def _score_pool(self) -> None:
        """MC-dropout entropy of every pool slice and the score of each of its regions."""
        self.uncertainty, self.scores = self._score(self.model, self.cycle)

    def _score(self, model: nn.Module, cycle: int,
               on_progress: Callable[[float], None] | None = None
               ) -> tuple[dict[Ref, np.ndarray], dict[Ref, np.ndarray]]:
        uncertainty: dict[Ref, np.ndarray] = {}
        scores: dict[Ref, np.ndarray] = {}
        model.to(self.device)
        bs = 16
        seed = self.seed + 7919 * cycle
        for start in tqdm(range(0, len(self.refs), bs), desc="uncertainty", unit="batch",
                          disable=not self.progress):
            idx = range(start, min(start + bs, len(self.refs)))
            x = torch.stack([self._pool[i]["image"] for i in idx]).to(self.device)
            samples = mc_predict(model, x, self.n_mc, seed=seed + start)
            ent = acq.entropy_of_mean(samples).float().cpu().numpy()
            for i, e in zip(idx, ent, strict=True):
                ref = self.refs[i]
                full = resize_image(e, self._gray[ref].shape).clip(min=0)
                uncertainty[ref] = full.astype(np.float32)
                scores[ref] = acq.region_scores(full, self.boxes(ref),
                                                reduce=self.reduce).numpy()
            if on_progress is not None:
                on_progress(min(1.0, (start + bs) / len(self.refs)))
        return uncertainty, scores

    def _answered(self) -> set[tuple[Ref, Box]]:
        return {(a.ref, a.box) for a in self.store}

    def _refill(self) -> None:
        """Queue the next ``regions_per_cycle`` regions by P1's rule (skipped ones last)."""
        taken = self._answered() | {(q.ref, q.box) for q in self._queue}
        scores = np.stack([self.scores[ref] for ref in self.refs])
        outside = np.stack([~self.allowed[ref] for ref in self.refs])
        for exclude in (taken | self._skipped, taken):
            labelled = outside | np.array([[(ref, b) in exclude for b in self.boxes(ref)]
                                           for ref in self.refs], dtype=bool)
            if self.strategy == "random":
                picks = acq.select_random_regions(labelled, self.regions_per_cycle, self._rng)
            else:
                picks = acq.select_regions(scores, self.regions_per_cycle, labelled)
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
        if not self._queue:
            self._refill()

    # --------------------------------------------------------------- the loop
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
            self.store.append(ann)
            self._advance()
            return ann

    def background(self) -> Annotation:
        """Tag the current region "background" (no infection in it); saved at once."""
        with self._lock:
            q = self._need_current("background")
            ann = Annotation("background", q.case_id, q.z, q.box, label=0, time=now())
            self.store.append(ann)
            self._advance()
            return ann

    def label_region(self, ref: Ref, box: Box, answer: RegionLabel) -> Annotation:
        """Record ``answer`` (a point or "background") for any region of the pool, e.g. the
        fully labelled images of P1's first cycle; the queue skips answered regions."""
        with self._lock:
            ref = (str(ref[0]), int(ref[1]))
            if ref not in self._gray:
                raise ValueError(f"label_region: slice {ref} is not in the pool")
            box = tuple(int(v) for v in box)
            if box not in self.boxes(ref):
                raise ValueError(f"label_region: box {list(box)} is not a region of slice {ref}")
            if (ref, box) in self._answered():
                raise ValueError(f"label_region: region {list(box)} of slice {ref} is answered")
            if answer.kind == "background":
                ann = Annotation("background", ref[0], ref[1], box, label=0, time=now())
            elif answer.kind == "point" and answer.point is not None:
                y, x, label = answer.point
                ann = Annotation("point", ref[0], ref[1], box, int(y), int(x), int(label) or 1,
                                 now())
                Annotation.from_json(ann.to_json(), "label_region")  # point inside its box
            else:
                raise ValueError(f"label_region: answers are points or background tags, not "
                                 f"{answer.kind!r}")
            self.store.append(ann)
            self._queue = [q for q in self._queue if (q.ref, q.box) != (ref, box)]
            if not self._queue:
                self._refill()
            return ann

    def undo(self) -> Annotation | None:
        """Remove the last answer (from the file too) and ask about its region again."""
        with self._lock:
            ann = self.store.pop()
            if ann is not None:
                score = float(self.scores[ann.ref][self.boxes(ann.ref).index(ann.box)])
                self._queue.insert(0, Query(ann.case_id, ann.z, ann.box, score))
            return ann

    def next(self) -> Query | None:
        """Skip the current region (it is asked again once nothing else is left)."""
        with self._lock:
            if self._queue:
                q = self._queue[0]
                self._skipped.add((q.ref, q.box))
            self._advance()
            return self._queue[0] if self._queue else None

    # --------------------------------------------------------------- training
    @property
    def training(self) -> bool:
        """True while a background cycle (:meth:`start_cycle`) runs."""
        return self._thread is not None and self._thread.is_alive()

    def train_cycle(self, keep_current: bool = False,
                    on_progress: Callable[[float], None] | None = None) -> CycleResult:
        """Train on every answer so far (P2 Eq. 2 point loss), re-score the pool and propose
        the next regions. CPU seconds with :func:`small_unet` at 64 px. The result depends
        only on the labels, the settings and the previous cycles (deterministic on CPU).

        Answers given while it trains (from another thread) are kept: training uses the
        labels as they were at its start and the new ones count in the next cycle.
        ``keep_current``: the region shown now stays the current question (the widget's
        background cycle); ``on_progress(fraction)`` reports 0..1.
        """
        from covidlib.data.torch_datasets import SliceDataset
        from covidlib.engine import fit

        report = on_progress or (lambda _f: None)
        with self._lock:
            refs = sorted({a.ref for a in self.store})
            if not refs:
                raise ValueError("train_cycle: no labels yet; click on infection or tag a "
                                 "region background first")
            points = {r: self.label_map(r) for r in refs}
            kinds = [a.kind for a in self.store]
            cost, cycle = self.ledger().total, self.cycle
            start = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        data = SliceDataset(self.cases, refs, size=self.size, points=points, progress=False)
        torch.manual_seed(self.seed)
        model = self.model_factory()
        if self.warm_start and (cycle > 0 or self.warm):
            model.load_state_dict(start)
        report(0.0)
        t0 = time.perf_counter()
        with self._threads():
            res = fit(model, self._loss(), data, None, epochs=self.epochs, lr=self.lr,
                      batch_size=min(self.batch_size, len(data)), device=self.device,
                      seed=self.seed, progress=self.progress,
                      on_epoch_end=lambda e, _m: report(0.8 * min(e, self.epochs)
                                                        / self.epochs))
            seconds = time.perf_counter() - t0
            model.eval()
            unc, scores = self._score(model, cycle + 1, lambda f: report(0.8 + 0.2 * f))
        result = CycleResult(cycle + 1, len(kinds), kinds.count("point"),
                             kinds.count("background"), len(refs), cost, seconds,
                             float(res.history[-1]["train_loss"]))
        with self._lock:
            self.model, self.uncertainty, self.scores = model, unc, scores
            self.cycle = cycle + 1
            answered = self._answered()
            head = self._queue[0] if keep_current and self._queue else None
            self._skipped.clear()
            self._queue = [] if head is None or (head.ref, head.box) in answered else [head]
            self._refill()
        if self.eval_refs:
            result.scores = self.evaluate(self.eval_refs)
        self.history.append(result)
        report(1.0)
        return result

    def _loss(self) -> nn.Module:
        """P2 Eq. 2 (mean over labelled pixels); clicks weighted by ``point_weight``."""
        from covidlib.engine import supervised_loss
        from covidlib.losses.batch import PointBatchLoss

        if self.point_weight == 1.0:
            return PointBatchLoss()
        weight = torch.tensor([1.0, self.point_weight], device=self.device)
        return supervised_loss(nn.CrossEntropyLoss(weight=weight, ignore_index=IGNORE),
                               target_key="points")

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
        torch.manual_seed(self.seed)
        model = self.model_factory()
        model.load_state_dict(state)
        self.model = model.eval()
        self.cycle = cycle
        with self._threads():
            self._score_pool()
        self._skipped.clear()
        self._queue.clear()
        self._refill()

    def predict(self, ref: Ref) -> np.ndarray:
        """The current model's infection probability on slice ``ref`` (any slice of the
        loaded cases), ``(size, size)`` float32, dropout off."""
        from covidlib.data.torch_datasets import SliceDataset

        item = SliceDataset(self.cases, [ref], size=self.size, progress=False)[0]
        with self._threads(), torch.no_grad():
            model = self.model.to(self.device).eval()
            logits = model(item["image"][None].to(self.device))
        return torch.softmax(logits.float(), 1)[0, 1].cpu().numpy().astype(np.float32)

    def evaluate(self, refs: Iterable[Ref]) -> dict[str, float]:
        """Dice, IoU, PPV, sensitivity, specificity of the current model on ``refs``."""
        from covidlib.data.torch_datasets import SliceDataset
        from covidlib.engine import evaluate

        data = SliceDataset(self.cases, list(refs), size=self.size, progress=False)
        with self._threads():
            scores = evaluate(self.model, data, self.device)
        return {k: float(scores[k]) for k in ("dice", "iou", "ppv", "sens", "spec")}
