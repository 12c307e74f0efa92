"""One active-learning core in the style of baal: a pool, a heuristic, an oracle, a loop.

Every active-learning method of covidlib runs on this module:

* P1 (Laradji et al., Sec. 3 and Fig. 3): the units are the K regions of every training slice
  (:class:`covidlib.active_pools.RegionPools`), the heuristic is the MC-dropout entropy, BALD
  or random selection of :mod:`covidlib.acquisition`, the oracle answers a region with a
  background tag, a point or the region's mask (:mod:`covidlib.data.oracle`);
* P3 (Rahimi et al., Sec. II): the units are whole volumes
  (:class:`covidlib.volume_al.VolumePool`), the heuristic is the summed MC-dropout variance
  (P3 Eq. 1) or random, the oracle hands over the volume's mask;
* the labelling widget: the same units and heuristics as P1, the oracle is a person: the loop
  runs in *step mode* (:meth:`ActiveLoop.step` proposes queries, :meth:`ActiveLoop.answer`
  takes the answers whenever they come).

The loop of one cycle (P1 Fig. 3, P3 Fig. 1): ``learner.train`` on the labelled units,
``learner.evaluate`` (the cycle's record), then, unless it is the last cycle, ``heuristic``
selects ``per_cycle`` queries and the oracle's answers are stored in the pool. In *batch
mode* (:meth:`ActiveLoop.run`) the whole state (pool, records, weights, the learner's extras,
the global random states) is written atomically and verified on load
(:mod:`covidlib.checkpoint`) after every cycle, so a killed run started again continues from
the last finished cycle with the same results.

The four parts are small interfaces (:class:`Pool`, :class:`Learner`, :data:`Heuristic`,
:data:`Oracle`); the score functions themselves are pure functions in
:mod:`covidlib.acquisition`.
"""

from __future__ import annotations

import copy
import shutil
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from covidlib import checkpoint as _ckpt
from covidlib.cache import config_hash
from covidlib.engine import _restore_rng, _rng_state

__all__ = [
    "STATE_FORMAT",
    "STATE_NAME",
    "ActiveLoop",
    "Heuristic",
    "Learner",
    "Oracle",
    "Pool",
    "Query",
    "Selection",
    "Trained",
    "load_state",
    "open_state",
]

STATE_NAME = "al_state.pt"
STATE_FORMAT = "covidlib.active.state/1"
WORK_PREFIX = "fit-cycle"

Unit = Hashable
"""A labelling unit: ``(image, region)`` for P1 and the widget, a case id for P3."""


@dataclass(frozen=True)
class Query:
    """A unit the heuristic asks the oracle about, with its score (None: random choice)."""

    unit: Any
    score: float | None = None


@dataclass
class Selection:
    """What a heuristic chose: the queries (best first) and ``info`` merged into the cycle's
    record (e.g. P3's scores of every candidate volume)."""

    queries: list[Query]
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trained:
    """One cycle's training: the ``model`` (None when it is built on demand), the
    ``weights`` the next cycle may warm-start from and the loop checkpoints (None: the
    learner keeps them itself), and ``info`` for the learner's own bookkeeping."""

    model: nn.Module | None
    weights: dict[str, torch.Tensor] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Pool:
    """The labelling units and their labels (override every method)."""

    def unlabelled(self) -> Sequence[Any]:
        """The units still to label, in a fixed order."""
        raise NotImplementedError

    def label(self, unit: Any, answer: Any) -> float:
        """Store the oracle's ``answer`` for ``unit``; returns its labelling cost (seconds).
        Labelling a unit twice is an error."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values for a ``weights_only`` checkpoint."""
        raise NotImplementedError

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        raise NotImplementedError


class Learner:
    """The model side of the loop (baal's ``ModelWrapper``): train, evaluate, bookkeeping."""

    def train(self, pool: Pool, cycle: int, previous: Mapping[str, torch.Tensor] | None,
              work_dir: Path | None) -> Trained:
        """Train on ``pool``'s labels; ``previous``: the last cycle's weights (warm start),
        ``work_dir``: a folder for the engine's per-epoch checkpoint (None: no resume)."""
        raise NotImplementedError

    def evaluate(self, trained: Trained, pool: Pool, cycle: int) -> dict[str, Any]:
        """The cycle's record (JSON-able): scores on held-out data, pool sizes ..."""
        raise NotImplementedError

    def note_answer(self, record: dict[str, Any], query: Query, answer: Any,
                    cost: float) -> None:
        """Note one answered query in the cycle's ``record`` (default: nothing)."""

    def finish(self, trained: Trained, cycle: int) -> None:
        """Called after the last cycle's evaluation (e.g. draw a figure's predictions)."""

    def extras(self) -> dict[str, Any]:
        """Extra state the loop checkpoints (tensors and plain values)."""
        return {}

    def load_extras(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`extras` (the whole state dict is passed)."""

    def postfix(self, record: Mapping[str, Any]) -> dict[str, str]:
        """What the progress bar shows after a cycle."""
        return {}


Heuristic = Callable[[Trained, Pool, int, int], Selection]
"""``heuristic(trained, pool, n, cycle) -> Selection``: pick at most ``n`` units of
``pool.unlabelled()`` (P1: ``n`` images, one region each; P3: ``n`` volumes)."""
Oracle = Callable[[Sequence[Query], int], list[Any]]
"""``oracle(queries, cycle) -> answers`` in the order of ``queries``."""
Callback = Callable[[int, dict[str, Any]], None]


# --------------------------------------------------------------------------------------------
# State file
# --------------------------------------------------------------------------------------------


def load_state(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """The loop's state in ``checkpoint_dir`` (None if none), verified (length, sha256)."""
    path = Path(checkpoint_dir) / STATE_NAME
    if not path.exists():
        return None
    try:
        state = _ckpt.load(path)
    except _ckpt.CorruptCheckpointError as exc:
        raise _ckpt.CorruptCheckpointError(
            path, f"{exc.reason}; the active-learning state cannot be used: delete the folder "
            "to start again") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise RuntimeError(f"{path}: not an active-learning state ({STATE_FORMAT})")
    return state


def open_state(ck_dir: Path | None, chash: str) -> dict[str, Any] | None:
    """Prepare ``ck_dir`` and read its state (None: none yet, or no ``ck_dir``); a state of
    another configuration raises ``ValueError``."""
    if ck_dir is None:
        return None
    if ck_dir.exists() and not ck_dir.is_dir():
        raise NotADirectoryError(f"{ck_dir}: checkpoint_dir exists and is not a folder")
    ck_dir.mkdir(parents=True, exist_ok=True)
    _ckpt.remove_dead_temps(ck_dir)  # left by killed writers; a live run's stay
    state = load_state(ck_dir)
    if state is not None and state.get("config_hash") != chash:
        raise ValueError(f"{ck_dir / STATE_NAME}: written by another configuration "
                         f"({state.get('config')}); use another checkpoint_dir or delete it")
    return state


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


class ActiveLoop:
    """Train -> evaluate -> select -> label, ``cycles + 1`` trainings at most (cycle 0 on the
    initial labels); stops early when the pool is empty or ``stop(pool, cycle)`` says so.

    Args:
        pool, learner, heuristic, oracle: the four parts (``oracle`` None: step mode only).
        per_cycle: ``n`` handed to the heuristic each cycle.
        cycles: the last cycle's number.
        config: JSON-able identity of the run; a checkpoint of another config is refused.
        checkpoint_dir: where the state file and the per-cycle work folders live.
        stop: extra stopping rule (e.g. P1's labelling budget).
        on_cycle: ``on_cycle(cycle, record)`` after each cycle's state was written.
    """

    def __init__(self, pool: Pool, learner: Learner, heuristic: Heuristic,
                 oracle: Oracle | None = None, *, per_cycle: int, cycles: int,
                 config: Mapping[str, Any] | None = None,
                 checkpoint_dir: str | Path | None = None,
                 stop: Callable[[Pool, int], bool] | None = None,
                 on_cycle: Callback | None = None) -> None:
        for name, v, lo in (("per_cycle", per_cycle, 0), ("cycles", cycles, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"ActiveLoop: {name}={v!r} must be an integer >= {lo}")
        self.pool, self.learner, self.heuristic, self.oracle = pool, learner, heuristic, oracle
        self.per_cycle, self.cycles = per_cycle, cycles
        self.config = dict(config or {})
        self.config_hash = config_hash(self.config)
        self.ck_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.stop, self.on_cycle = stop, on_cycle
        self.cycle = 0  # the next cycle to train
        self.records: list[dict[str, Any]] = []
        self.timing: list[dict[str, float]] = []
        self.weights: dict[str, torch.Tensor] | None = None
        self.pending: list[Query] = []
        self.trained: Trained | None = None
        self.done = False
        self._resumed = False

    # ---------------------------------------------------------------- state
    def resume(self) -> bool:
        """Load the state of ``checkpoint_dir`` if there is one; True when one was loaded."""
        self._resumed = True
        state = open_state(self.ck_dir, self.config_hash)
        if state is None:
            return False
        self.pool.load_state_dict(state["pools"])
        self.records, self.timing = list(state["records"]), list(state["timing"])
        self.weights, self.cycle = state["model"], int(state["cycle"]) + 1
        self.pending = [Query(u, s) for u, s in state.get("pending", [])]
        self.done = bool(state["done"])
        _restore_rng(state["rng"])
        self.learner.load_extras(state)
        return True

    def save(self) -> None:
        """Write the state atomically (nothing without ``checkpoint_dir``)."""
        if self.ck_dir is None:
            return
        self.ck_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "format": STATE_FORMAT, "config": self.config, "config_hash": self.config_hash,
            "cycle": self.cycle - 1, "done": self.done, "pools": self.pool.state_dict(),
            "records": self.records, "timing": self.timing, "model": self.weights,
            "pending": [(q.unit, q.score) for q in self.pending],
            "rng": _rng_state(), "torch_version": str(torch.__version__),
        }
        _ckpt.save({**self.learner.extras(), **state}, self.ck_dir / STATE_NAME)

    def _work_dir(self, cycle: int) -> Path | None:
        """The engine's checkpoint folder of ``cycle`` (other cycles' folders are removed)."""
        if self.ck_dir is None:
            return None
        work = self.ck_dir / f"{WORK_PREFIX}{cycle:04d}"
        for old in self.ck_dir.glob(f"{WORK_PREFIX}*"):
            if old != work:
                shutil.rmtree(old, ignore_errors=True)
        return work

    # ---------------------------------------------------------------- step mode
    def is_last(self, cycle: int) -> bool:
        """``cycles`` reached, no unit left or ``stop`` says so."""
        return (cycle >= self.cycles or len(self.pool.unlabelled()) == 0
                or (self.stop is not None and bool(self.stop(self.pool, cycle))))

    def step(self) -> list[Query]:
        """One cycle up to the questions: train on the labels so far, evaluate, and (unless it
        is the last cycle) let the heuristic propose :attr:`pending` queries. Unanswered
        queries of the previous step are dropped. Returns the new queries ([] when done)."""
        if self.done:
            raise ValueError("ActiveLoop.step: the loop is finished (last cycle reached)")
        cycle, t0 = self.cycle, time.perf_counter()
        work = self._work_dir(cycle)
        trained = self.learner.train(self.pool, cycle, self.weights, work)
        t_train = time.perf_counter() - t0
        record = self.learner.evaluate(trained, self.pool, cycle)
        t1 = time.perf_counter()
        self.trained, self.pending = trained, []
        if self.is_last(cycle):
            self.done = True
            self.learner.finish(trained, cycle)
        else:
            sel = self.heuristic(trained, self.pool, self.per_cycle, cycle)
            record.update(sel.info)
            self.pending = list(sel.queries)
        self.records.append(record)
        self.timing.append({"cycle": cycle, "train_s": round(t_train, 3),
                            "select_s": round(time.perf_counter() - t1, 3),
                            "total_s": round(time.perf_counter() - t0, 3)})
        if trained.weights is not None:
            self.weights = trained.weights
        self.cycle = cycle + 1
        return list(self.pending)

    def answer(self, unit: Any, answer: Any) -> float:
        """Store an answer (a person's or the oracle's) for ``unit``, noted in the last
        record; a pending query is taken off :attr:`pending`. Returns its cost."""
        query = next((q for q in self.pending if q.unit == unit), Query(unit, None))
        cost = self.pool.label(unit, answer)
        self.pending = [q for q in self.pending if q.unit != unit]
        if self.records:
            self.learner.note_answer(self.records[-1], query, answer, cost)
        return cost

    # ---------------------------------------------------------------- batch mode
    def run_cycle(self) -> dict[str, Any]:
        """One whole cycle with the oracle (step, answer every query, write the state)."""
        if self.oracle is None:
            raise ValueError("ActiveLoop.run: no oracle; answer the queries with answer()")
        cycle = self.cycle
        queries = self.step()
        for q, a in zip(queries, self.oracle(queries, cycle), strict=True):
            self.answer(q.unit, a)
        work = self.ck_dir / f"{WORK_PREFIX}{cycle:04d}" if self.ck_dir else None
        self.save()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        return self.records[-1]

    def run(self, progress: bool = True, desc: str = "AL") -> list[dict[str, Any]]:
        """Batch mode: cycles until the last, resuming from ``checkpoint_dir`` (unless
        :meth:`resume` was called already); the records."""
        if not self._resumed:
            self.resume()
        bar = tqdm(total=self.cycles + 1, initial=self.cycle, unit="cycle", desc=desc,
                   disable=not progress or self.done)
        try:
            while not self.done:
                record = self.run_cycle()
                bar.update(1)
                bar.set_postfix(self.learner.postfix(record))
                if self.on_cycle is not None:
                    self.on_cycle(self.cycle - 1, record)
        finally:
            bar.close()
        return copy.deepcopy(self.records)
