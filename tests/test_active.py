"""P1's active-learning loop: pools, oracle answers and costs, the loss, the loop itself and
its resume after a kill (SIGKILL in a subprocess, and a crash inside a cycle's training)."""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from covidlib.acquisition import select_random_regions
from covidlib.active import (
    STATE_NAME,
    ALConfig,
    RegionLabelDataset,
    RegionPools,
    balanced_point_loss,
    decode_mask,
    encode_mask,
    evenly_spaced,
    load_al_data,
    load_state,
    region_index_map,
    run_active_learning,
    training_curve,
)
from covidlib.data.oracle import IGNORE

THREADS = 1  # one thread: deterministic and fast on a busy 2-core machine
torch.set_num_threads(THREADS)
LN2, LN43 = math.log(2.0), math.log(4.0 / 3.0)

TINY = {
    "dataset": "synthetic", "split": "mixed", "heuristic": "entropy", "n_regions": 16,
    "initial_images": 2, "per_cycle": 3, "cycles": 3, "epochs": 2, "batch_size": 2,
    "lr": 1e-3, "model": "unet2d",
    "model_kwargs": {"base_width": 4, "depth": 2, "dropout": 0.5}, "size": 32,
    "n_samples": 2, "score_batch_size": 8, "loss_balance": "class",
    "max_slices": {"train": 10, "val": 3, "test": 4}, "figure_slices": 1, "seed": 3,
}


def _mask16() -> np.ndarray:
    """16 x 16 mask, K = 64 -> 2 x 2 regions; infection in the top-left 3 x 3 pixels."""
    m = np.zeros((16, 16), dtype=np.uint8)
    m[0:3, 0:3] = 1
    return m


# ----------------------------------------------------------------------------- pools, costs
def test_p1_cost_example_2460_seconds_and_pool_transitions():
    """P1 Sec. 5.3: 5 images x 64 regions x 3 s + 100 cycles x 5 regions x 3 s = 2460 s."""
    m = _mask16()
    pools = RegionPools(20, (16, 16), 64)
    assert pools.counts() == {"labelled": 0, "partial": 0, "unlabelled": 20}
    rng = np.random.default_rng(0)
    for i in range(5):
        assert pools.label_image(i, m, "point", rng) == 5 * 0 + 3 * 64
    assert pools.ledger.total == 5 * 3 * 64 == 960
    assert pools.counts() == {"labelled": 5, "partial": 0, "unlabelled": 15}
    # infected regions: (0,0), (0,1), (1,0), (1,1) of the 2x2-pixel grid -> 4 points per image
    assert pools.ledger.counts == {"point": 20, "background": 300}
    for _cycle in range(100):
        for i, k in select_random_regions(pools.labelled, 5, rng):
            pools.label_region(i, k, m, "point", rng)
    assert pools.ledger.total == 5 * 3 * 64 + 100 * 5 * 3 == 2460
    assert pools.n_labelled_regions == 320 + 500
    c = pools.counts()
    assert c["labelled"] + c["partial"] + c["unlabelled"] == 20
    assert c["labelled"] >= 5 and pools.candidates.size == 20 - c["labelled"]


def test_point_and_tag_answers_write_p1_label_maps():
    m = np.zeros((8, 8), dtype=np.uint8)
    m[1, 1] = m[1, 2] = 1  # infection inside region 0 (rows 0-3, cols 0-3) only
    pools = RegionPools(2, (8, 8), 4)
    answer, cost = pools.label_region(0, 0, m, "point", np.random.default_rng(0))
    assert answer.kind == "point" and cost == 3.0
    lm = pools.label_maps[0]
    assert (lm == 1).sum() == 1 and sorted([int(lm[1, 1]), int(lm[1, 2])]) == [1, IGNORE]
    assert (lm[:4, :4] == IGNORE).sum() == 15  # the rest of the region stays unlabelled
    answer, cost = pools.label_region(0, 3, m, "point", np.random.default_rng(0))
    assert answer.kind == "background" and cost == 3.0
    assert (lm[4:, 4:] == 0).all()  # the tag labels the whole region background
    assert (lm[:4, 4:] == IGNORE).all() and (lm[4:, :4] == IGNORE).all()
    assert pools.partial_images.tolist() == [0] and pools.unlabelled_images.tolist() == [1]
    with pytest.raises(ValueError, match="already labelled"):
        pools.label_region(0, 0, m, "point", np.random.default_rng(0))
    with pytest.raises(IndexError, match="region 4"):
        pools.label_region(1, 4, m, "point", np.random.default_rng(0))
    with pytest.raises(ValueError, match="supervision"):
        pools.label_region(1, 1, m, "box", np.random.default_rng(0))


def test_per_pixel_answers_cost_three_seconds_per_polygon_vertex():
    m = np.zeros((8, 8), dtype=np.uint8)
    m[1:4, 1:4] = 1  # a 3 x 3 square in region 0: its polygon has 4 vertices
    pools = RegionPools(1, (8, 8), 4)
    answer, cost = pools.label_region(0, 0, m, "pixel", np.random.default_rng(0))
    assert answer.kind == "mask" and cost == 3 * 4
    assert (pools.label_maps[0, :4, :4] == m[:4, :4]).all()
    assert pools.label_image(0, m, "pixel", np.random.default_rng(0)) == 3 * 3  # 3 tags
    assert pools.ledger.total == 21 and pools.labelled_images.tolist() == [0]


def test_pools_state_roundtrip():
    pools = RegionPools(3, (16, 16), 64)
    pools.label_image(1, _mask16(), "point", np.random.default_rng(1))
    back = RegionPools.from_state_dict(pools.state_dict())
    assert np.array_equal(back.labelled, pools.labelled)
    assert np.array_equal(back.label_maps, pools.label_maps)
    assert back.ledger.to_dict() == pools.ledger.to_dict()
    assert back.labels_digest() == pools.labels_digest()


def test_region_index_map_and_evenly_spaced():
    idx = region_index_map((5, 5), 4)  # cuts [0, 2, 5]
    assert idx[:2, :2].unique().tolist() == [0] and idx[2:, 2:].unique().tolist() == [3]
    assert idx[0, 4] == 1 and idx[4, 0] == 2
    assert evenly_spaced(list(range(10)), 3) == [1, 5, 8]
    assert evenly_spaced([1, 2], None) == [1, 2] and evenly_spaced([1, 2], 5) == [1, 2]


# ----------------------------------------------------------------------------- loss
def _loss_case() -> tuple[torch.Tensor, torch.Tensor]:
    """4 x 4 image, K = 4. Region 0 (rows 0-1, cols 0-1): background tag, logits (0, 0) ->
    CE ln 2 on 4 pixels. Region 1: one infection point with logits (0, ln 3) -> CE ln 4/3.
    Region 2: background tag with logits (ln 3, 0) -> CE ln 4/3 on 4 pixels. Region 3:
    unlabelled."""
    logits = torch.zeros(1, 2, 4, 4)
    labels = torch.full((1, 4, 4), IGNORE, dtype=torch.int64)
    labels[0, :2, :2] = 0
    labels[0, 0, 3] = 1
    logits[0, 1, 0, 3] = math.log(3.0)
    labels[0, 2:, :2] = 0
    logits[0, 0, 2:, :2] = math.log(3.0)
    return logits, labels


@pytest.mark.parametrize(("balance", "expected"), [
    ("none", (4 * LN2 + 5 * LN43) / 9),
    ("class", ((4 * LN2 + 4 * LN43) / 8 + LN43) / 2),
    ("region", (LN2 + LN43 + LN43) / 3),
])
def test_balanced_point_loss_by_hand(balance, expected):
    logits, labels = _loss_case()
    got = balanced_point_loss(logits, labels, balance, n_regions=4)
    assert float(got) == pytest.approx(expected, abs=1e-6)


def test_balanced_point_loss_edges():
    logits = torch.zeros(1, 2, 4, 4, requires_grad=True)
    empty = torch.full((1, 4, 4), IGNORE, dtype=torch.int64)
    loss = balanced_point_loss(logits, empty, "class")
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad is not None
    with pytest.raises(ValueError, match="n_regions"):
        balanced_point_loss(logits, empty, "region")
    with pytest.raises(ValueError, match="do not fit"):
        balanced_point_loss(logits, empty[:, :2], "class")


def test_region_label_dataset_repeats_small_sets():
    base = [{"image": torch.full((3, 2, 2), float(i)), "case_id": "c", "z": i} for i in range(4)]
    maps = np.stack([np.full((2, 2), i, dtype=np.uint8) for i in range(4)])
    ds = RegionLabelDataset(base, maps, [1, 3], min_items=5)  # type: ignore[arg-type]
    assert len(ds) == 5
    assert [int(ds[j]["points"][0, 0]) for j in range(5)] == [1, 3, 1, 3, 1]
    assert ds[1]["image"][0, 0, 0] == 3.0 and ds[0]["points"].dtype == torch.int64
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(ValueError, match="no labelled images"):
        RegionLabelDataset(base, maps, [])  # type: ignore[arg-type]


def test_mask_codec_and_config_errors():
    m = np.random.default_rng(0).random((7, 9)) > 0.5
    assert np.array_equal(decode_mask(encode_mask(m), (7, 9)), m)
    with pytest.raises(ValueError, match="perfect square"):
        ALConfig(n_regions=8)
    with pytest.raises(ValueError, match="heuristic"):
        ALConfig(heuristic="margin")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['cycle'\]"):
        ALConfig.from_mapping({"cycle": 3})
    with pytest.raises(ValueError, match="budget_seconds"):
        ALConfig(budget_seconds=-1.0)


# ----------------------------------------------------------------------------- the loop
@pytest.fixture(scope="module")
def tiny_data(synthetic_root):
    c = ALConfig.from_mapping(TINY)
    return load_al_data(c.dataset, c.split, c.size, c.max_slices, synthetic_root)


@pytest.fixture(scope="module")
def reference(tiny_data, synthetic_root, tmp_path_factory):
    """An uninterrupted run with checkpoints (its state holds the final weights)."""
    ck = tmp_path_factory.mktemp("reference")
    result = run_active_learning(TINY, synthetic_root, ck, progress=False, device="cpu",
                                 data=tiny_data)
    return result, load_state(ck), ck


def _same(a: dict, b: dict) -> None:
    """Equal results (wall times aside) and equal final weights/labels."""
    strip = [{k: v for k, v in r.items() if k != "timing"} for r in (a, b)]
    assert json.dumps(strip[0], sort_keys=True) == json.dumps(strip[1], sort_keys=True)


def _same_state(s1: dict, s2: dict) -> None:
    assert s1["cycle"] == s2["cycle"] and s1["done"] and s2["done"]
    assert torch.equal(s1["pools"]["labelled"], s2["pools"]["labelled"])
    assert torch.equal(s1["pools"]["label_maps"], s2["pools"]["label_maps"])
    assert s1["model"].keys() == s2["model"].keys()
    for k in s1["model"]:
        assert torch.equal(s1["model"][k], s2["model"][k]), k


def test_loop_records_labels_and_costs(reference):
    result, state, ck = reference
    assert not list(ck.glob("fit-cycle*"))  # the engine's in-cycle checkpoints are removed
    recs = result["records"]
    assert [r["cycle"] for r in recs] == [0, 1, 2, 3]
    assert [r["n_labelled_regions"] for r in recs] == [32, 35, 38, 41]
    assert [r["seconds"] for r in recs] == [3.0 * n for n in (32, 35, 38, 41)]
    assert recs[0]["pools"] == {"labelled": 2, "partial": 0, "unlabelled": 8}
    labelled = np.zeros((10, 16), dtype=bool)
    for i in result["initial_images"]:
        labelled[i] = True
    for r in recs[:-1]:
        assert len(r["selected"]) == 3 and len({i for i, _ in r["selected"]}) == 3
        for i, k in r["selected"]:
            assert not labelled[i, k]  # never a labelled region
            labelled[i, k] = True
        assert r["selected_scores"] == sorted(r["selected_scores"], reverse=True)
        assert set(r["selected_kinds"]) <= {"point", "background"}
    assert recs[-1]["selected"] == []
    assert np.array_equal(state["pools"]["labelled"].numpy(), labelled)
    for r in recs:
        assert set(r["test"]) == {"dice", "iou", "ppv", "sens", "spec"}
        assert 0.0 <= r["test"]["spec"] <= 1.0
    assert result["label_seconds"] == 123.0 and result["full_effort_seconds"] == 10 * 96.0
    assert len(result["figure"]["pred"]) == 1


def test_finished_state_is_read_back_and_other_configs_refused(reference, tiny_data,
                                                              synthetic_root, tmp_path):
    result, state, _ck = reference
    ck = tmp_path / "ck"
    ck.mkdir()
    torch.save(state, ck / STATE_NAME)
    again = run_active_learning(TINY, synthetic_root, ck, progress=False, device="cpu",
                                data=tiny_data)
    assert again == result  # returned from the state, nothing recomputed (same wall times)
    with pytest.raises(ValueError, match="another configuration"):
        run_active_learning({**TINY, "seed": 4}, synthetic_root, ck, progress=False,
                            device="cpu", data=tiny_data)


def test_random_pixel_and_budget(tiny_data, synthetic_root):
    cfg = {**TINY, "heuristic": "random", "supervision": "pixel", "cycles": 5,
           "budget_seconds": 120.0, "epochs": 1}
    res = run_active_learning(cfg, synthetic_root, None, progress=False, device="cpu",
                              data=tiny_data)
    recs = res["records"]
    assert recs[-1]["seconds"] >= 120.0 > recs[-2]["seconds"]  # stops once the budget is hit
    assert len(recs) < 6
    assert all(s is None for r in recs for s in r["selected_scores"])
    # per pixel: a tag costs 3 s, a mask 3 s per vertex (>= 3 vertices): never below 3 s each
    assert all(r["seconds"] >= 3.0 * r["n_labelled_regions"] for r in recs)
    assert set(res["ledger"]["counts"]) <= {"background", "mask"}


def test_crash_inside_a_cycle_resumes_to_identical_results(reference, tiny_data, synthetic_root,
                                                           tmp_path):
    class Crash(Exception):
        pass

    def crash(event, info):
        if event == "epoch" and info["cycle"] == 2 and info["epoch"] == 1:
            raise Crash

    with pytest.raises(Crash):
        run_active_learning(TINY, synthetic_root, tmp_path, progress=False, device="cpu",
                            data=tiny_data, callback=crash)
    assert load_state(tmp_path)["cycle"] == 1  # cycles 0 and 1 done
    assert (tmp_path / "fit-cycle0002" / "checkpoint.pt").exists()  # mid-cycle checkpoint
    result = run_active_learning(TINY, synthetic_root, tmp_path, progress=False, device="cpu",
                                 data=tiny_data)
    _same(result, reference[0])
    _same_state(load_state(tmp_path), reference[1])
    assert not list(tmp_path.glob("fit-cycle*"))


SCRIPT = """
import json, signal, sys, torch
torch.set_num_threads(int(sys.argv[4]))
from covidlib.active import run_active_learning

def stop_after_first_cycle(event, info):
    if event == "cycle":  # its state is written: say so, then wait for the SIGKILL
        print("checkpointed", info["cycle"], flush=True)
        while True:
            signal.pause()

run_active_learning(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], progress=False,
                    device="cpu", callback=stop_after_first_cycle)
"""
HANG_S = 120  # the child neither stopped nor failed by then: fail instead of waiting


def test_sigkill_after_the_first_cycle_resumes_to_identical_results(reference, tiny_data,
                                                                    synthetic_root, tmp_path):
    ck = tmp_path / "killed"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, json.dumps(TINY), str(synthetic_root), str(ck),
         str(THREADS)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:  # the child stops after its first cycle's state is written, until it is killed
        ready, _, _ = select.select([proc.stdout], [], [], HANG_S)
        if not ready:
            pytest.fail(f"no checkpoint after {HANG_S} s")
        line = proc.stdout.readline().decode()
        if line != "checkpointed 0\n":
            proc.wait(timeout=30)
            pytest.fail(f"the run ended before its first checkpoint ({line!r}): "
                        f"{proc.stderr.read().decode()[-2000:]}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = load_state(ck)
    assert killed is not None and not killed["done"]  # killed before the run finished
    result = run_active_learning(TINY, synthetic_root, ck, progress=False, device="cpu",
                                 data=tiny_data)
    _same(result, reference[0])
    _same_state(load_state(ck), reference[1])


def test_real_covid_semiseg_slices_feed_the_loop(shared_data):
    data = load_al_data("covid-semiseg", "p2", 32, {"train": 6, "val": 2, "test": 3},
                        shared_data)
    assert data.fingerprint["real"] and data.intensity == "uint8"
    assert data.n_train_split == 45  # P2's COVID-19-A: 50 training slices, 5 for validation
    assert (len(data.train), len(data.val), len(data.test)) == (6, 2, 3)
    assert data.masks.shape == (6, 32, 32) and set(np.unique(data.masks)) <= {0, 1}
    assert data.test_gray.dtype == np.uint8 and data.test_gray.shape == (3, 32, 32)
    res = run_active_learning({**TINY, "dataset": "covid-semiseg", "split": "p2",
                               "max_slices": {"train": 6, "val": 2, "test": 3}, "cycles": 1,
                               "epochs": 1}, shared_data, None, progress=False, device="cpu",
                              data=data)
    assert [r["n_labelled_regions"] for r in res["records"]] == [32, 35]


def test_training_curve_keeps_epoch_loss_and_validation_dice():
    hist = [{"epoch": 1, "steps": 3, "train_loss": 0.9, "val_dice": 0.25, "seconds": 1.0},
            {"epoch": 2, "steps": 3, "train_loss": 0.5, "seconds": 1.0},  # not validated
            {"epoch": 3, "steps": 3, "train_loss": 0.25, "val_dice": float("nan")}]
    assert training_curve(hist) == [
        {"epoch": 1, "train_loss": 0.9, "val_dice": 0.25},
        {"epoch": 2, "train_loss": 0.5, "val_dice": None},
        {"epoch": 3, "train_loss": 0.25, "val_dice": None}]


def test_opening_the_state_keeps_a_live_writers_temp_file(tmp_path):
    """Two live runs on one checkpoint folder must not delete each other's temporary files;
    a dead process's temporary file is removed (issue 16, item 3)."""
    import socket
    import sys

    from covidlib.active import STATE_NAME, _open_state

    host = socket.gethostname()
    live = tmp_path / f".{STATE_NAME}.{host}.{os.getpid()}.tmp"
    live.write_bytes(b"being written")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = tmp_path / f".{STATE_NAME}.{host}.{proc.pid}.tmp"
    dead.write_bytes(b"left by a killed writer")
    assert _open_state(tmp_path, "any-hash") is None
    assert live.exists()
    assert not dead.exists()
