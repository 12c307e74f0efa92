"""The active-learning core (covidlib.active_loop): hand-computable picks, resume after a
simulated kill, step mode, and P1's / P3's pools and oracles on it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from covidlib import active_loop as al
from covidlib import checkpoint as ckpt
from covidlib.active_loop import STATE_NAME, ActiveLoop, Query, Selection, load_state
from covidlib.active_pools import RegionOracle, RegionPools
from covidlib.volume_al import VolumeOracle, VolumePool

# A toy problem: units 0..5 with a fixed "uncertainty" each; the heuristic takes the n most
# uncertain unlabelled units (ties to the smaller unit), the oracle answers unit u with 10 u.
UNCERTAINTY = {0: 0.1, 1: 0.9, 2: 0.5, 3: 0.9, 4: 0.2, 5: 0.7}


class ListPool(al.Pool):
    def __init__(self, units: Sequence[int], initial: Sequence[int] = ()) -> None:
        self.units = list(units)
        self.answers: dict[int, Any] = {u: 10 * u for u in initial}

    def unlabelled(self) -> list[int]:
        return [u for u in self.units if u not in self.answers]

    def label(self, unit: Any, answer: Any) -> float:
        if unit in self.answers or unit not in self.units:
            raise ValueError(f"unit {unit} is not unlabelled")
        self.answers[unit] = answer
        return 3.0

    def state_dict(self) -> dict[str, Any]:
        return {"answers": [[u, a] for u, a in sorted(self.answers.items())]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.answers = {int(u): a for u, a in state["answers"]}


class SumLearner(al.Learner):
    """'Trains' a model whose one weight is the sum of the answers (warm start adds the
    previous weight); counts its trainings."""

    def __init__(self) -> None:
        self.trainings: list[int] = []

    def train(self, pool: al.Pool, cycle: int, previous: Mapping[str, torch.Tensor] | None,
              work_dir: Path | None) -> al.Trained:
        assert isinstance(pool, ListPool)
        self.trainings.append(cycle)
        w = float(sum(pool.answers.values())) + (float(previous["w"]) if previous else 0.0)
        return al.Trained(None, {"w": torch.tensor(w, dtype=torch.float64)})

    def evaluate(self, trained: al.Trained, pool: al.Pool, cycle: int) -> dict[str, Any]:
        assert isinstance(pool, ListPool) and trained.weights is not None
        return {"cycle": cycle, "w": float(trained.weights["w"]),
                "labelled": sorted(pool.answers), "selected": [], "cost": 0.0}

    def note_answer(self, record: dict[str, Any], query: Query, answer: Any,
                    cost: float) -> None:
        record["selected"].append(query.unit)
        record["cost"] += cost


def top_uncertain(trained: al.Trained, pool: al.Pool, n: int, cycle: int) -> Selection:
    ranked = sorted(pool.unlabelled(), key=lambda u: (-UNCERTAINTY[u], u))
    return Selection([Query(u, UNCERTAINTY[u]) for u in ranked[:n]], {"n_candidates":
                                                                    len(pool.unlabelled())})


def times_ten(queries: Sequence[Query], cycle: int) -> list[int]:
    return [10 * q.unit for q in queries]


def make_loop(ck: Path | None = None, cycles: int = 2, **kw: Any) -> ActiveLoop:
    return ActiveLoop(ListPool(range(6), [0]), SumLearner(), top_uncertain, times_ten,
                      per_cycle=2, cycles=cycles, config={"toy": 1}, checkpoint_dir=ck, **kw)


def test_batch_mode_picks_the_hand_computed_units() -> None:
    loop = make_loop()
    records = loop.run(progress=False)
    # cycle 0: labelled {0}; top-2 of {1: .9, 2: .5, 3: .9, 4: .2, 5: .7} = 1, 3 (tie -> 1)
    # cycle 1: labelled {0, 1, 3}; top-2 of {2: .5, 4: .2, 5: .7} = 5, 2
    # cycle 2 (the last): labelled {0, 1, 2, 3, 5}, nothing selected
    assert [r["selected"] for r in records] == [[1, 3], [5, 2], []]
    assert [r["labelled"] for r in records] == [[0], [0, 1, 3], [0, 1, 2, 3, 5]]
    assert [r.get("n_candidates") for r in records] == [5, 3, None]
    # warm start: w = answers + previous w: 0; 0 + 40 + 0; 0 + 40 + 70 + 40
    assert [r["w"] for r in records] == [0.0, 40.0, 150.0]
    assert [r["cost"] for r in records] == [6.0, 6.0, 0.0]
    assert loop.done and loop.pending == [] and [t["cycle"] for t in loop.timing] == [0, 1, 2]


def test_the_loop_stops_when_the_pool_is_empty_or_stop_says_so() -> None:
    loop = make_loop(cycles=10)
    assert [r["labelled"][-1] for r in loop.run(progress=False)] == [0, 3, 5, 5]
    assert loop.pool.unlabelled() == []
    stopped = make_loop(cycles=10, stop=lambda pool, cycle: cycle == 1)
    assert len(stopped.run(progress=False)) == 2


def test_resume_after_a_simulated_kill_gives_the_uninterrupted_records(tmp_path: Path) -> None:
    whole = make_loop(tmp_path / "whole").run(progress=False)

    class Killed(Exception):
        pass

    def kill(cycle: int, record: dict[str, Any]) -> None:
        if cycle == 1:
            raise Killed

    with pytest.raises(Killed):
        make_loop(tmp_path / "run", on_cycle=kill).run(progress=False)
    state = load_state(tmp_path / "run")
    assert state is not None and state["cycle"] == 1 and not state["done"]
    again = make_loop(tmp_path / "run")
    assert again.run(progress=False) == whole
    assert again.learner.trainings == [2]  # cycles 0 and 1 came from the state file
    done = make_loop(tmp_path / "run")  # a finished run trains nothing
    assert done.run(progress=False) == whole and done.learner.trainings == []


def test_a_state_of_another_config_or_a_corrupt_one_is_refused(tmp_path: Path) -> None:
    make_loop(tmp_path, cycles=1).run(progress=False)
    other = ActiveLoop(ListPool(range(6), [0]), SumLearner(), top_uncertain, times_ten,
                       per_cycle=2, cycles=1, config={"toy": 2}, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="another configuration"):
        other.run(progress=False)
    data = bytearray((tmp_path / STATE_NAME).read_bytes())
    data[-50] ^= 0xFF
    (tmp_path / STATE_NAME).write_bytes(bytes(data))
    with pytest.raises(ckpt.CorruptCheckpointError, match="delete the folder"):
        make_loop(tmp_path, cycles=1).run(progress=False)


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="per_cycle=-1"):
        ActiveLoop(ListPool([0]), SumLearner(), top_uncertain, per_cycle=-1, cycles=1)
    with pytest.raises(ValueError, match=r"cycles=1\.5"):
        ActiveLoop(ListPool([0]), SumLearner(), top_uncertain, per_cycle=1,
                   cycles=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no oracle"):
        ActiveLoop(ListPool(range(3), [0]), SumLearner(), top_uncertain, per_cycle=1,
                   cycles=1).run(progress=False)


def test_step_mode_a_person_answers_later(tmp_path: Path) -> None:
    loop = ActiveLoop(ListPool(range(6), [0]), SumLearner(), top_uncertain, None,
                      per_cycle=2, cycles=5, config={"toy": 1}, checkpoint_dir=tmp_path)
    assert not loop.resume()
    assert [q.unit for q in loop.step()] == [1, 3]
    assert loop.answer(3, 30) == 3.0  # any pending one, in any order
    assert [q.unit for q in loop.pending] == [1]
    assert loop.records[-1]["selected"] == [3]
    loop.save()  # e.g. the widget is closed here
    back = ActiveLoop(ListPool(range(6), [0]), SumLearner(), top_uncertain, None,
                      per_cycle=2, cycles=5, config={"toy": 1}, checkpoint_dir=tmp_path)
    assert back.resume()
    assert back.pending == [Query(1, 0.9)] and back.pool.answers == {0: 0, 3: 30}
    back.answer(4, 40)  # a unit the heuristic did not propose
    assert back.pending == [Query(1, 0.9)] and back.records[-1]["selected"] == [3, 4]
    with pytest.raises(ValueError, match="not unlabelled"):
        back.answer(4, 40)
    # the next step drops the unanswered query and proposes again from the scores
    assert [q.unit for q in back.step()] == [1, 5]
    assert back.records[-1]["labelled"] == [0, 3, 4] and back.cycle == 2


def test_step_after_the_last_cycle_is_an_error() -> None:
    loop = make_loop(cycles=0)
    assert loop.step() == [] and loop.done
    with pytest.raises(ValueError, match="finished"):
        loop.step()


# --------------------------------------------------------------------------------------------
# P1's and P3's pools and oracles
# --------------------------------------------------------------------------------------------


def test_region_pools_are_a_pool_of_image_region_units() -> None:
    pools = RegionPools(2, (4, 4), 4)  # 2 images x 4 regions of 2 x 2 pixels
    mask = np.zeros((2, 4, 4), dtype=np.uint8)
    mask[1, 0, 3] = 1  # infection in region 1 of image 1
    assert pools.unlabelled()[:3] == [(0, 0), (0, 1), (0, 2)] and len(pools.unlabelled()) == 8
    oracle = RegionOracle(mask, pools.boxes, "point", seed=0)
    answers = oracle([Query((1, 1)), Query((1, 0))], cycle=3)
    assert [a.kind for a in answers] == ["point", "background"]
    assert tuple(answers[0].point)[:2] == (0, 3)  # the only infected pixel
    again = oracle([Query((1, 1)), Query((1, 0))], cycle=3)  # seeded per cycle
    assert [(a.kind, a.point) for a in again] == [(a.kind, a.point) for a in answers]
    assert pools.label((1, 1), answers[0]) == 3.0  # P1 Sec. 5.3: 3 s per point
    assert pools.label_maps[1, 0, 3] == 1 and pools.labelled[1].tolist() == [0, 1, 0, 0]
    assert (1, 1) not in pools.unlabelled()
    with pytest.raises(ValueError, match="already labelled"):
        pools.label((1, 1), answers[0])
    copy = RegionPools(2, (4, 4), 4)
    copy.load_state_dict(pools.state_dict())
    assert copy.labels_digest() == pools.labels_digest()
    with pytest.raises(ValueError, match="does not fit"):
        RegionPools(3, (4, 4), 4).load_state_dict(pools.state_dict())


def test_volume_pool_and_oracle() -> None:
    pool = VolumePool(["a", "b", "c"], ["b"])
    assert pool.unlabelled() == ["a", "c"]
    assert pool.label("c", None) == 0.0 and pool.labelled == ["b", "c"]
    with pytest.raises(ValueError, match="'c' is not an unlabelled"):
        pool.label("c", None)
    with pytest.raises(ValueError, match="'z' is not an unlabelled"):
        pool.label("z", None)
    other = VolumePool([], [])
    other.load_state_dict(pool.state_dict())
    assert other.unlabelled() == ["a"]

    class V:
        label = torch.ones(2)

    assert VolumeOracle({"a": V()})([Query("a")], 0)[0].tolist() == [1.0, 1.0]
