"""P1's typed settings (:class:`covidlib.experiments.p1_settings.P1Settings`): profiles as
data, validation of names and values, and the run configs they build (the cache keys)."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest

from covidlib.cache import config_hash
from covidlib.experiments import p1
from covidlib.experiments.p1_settings import P1Settings, SettingsError, _variant

# The cpu profile as the dict it was before the typed settings (P1 Implementation Details,
# shrunk for 2 CPU cores): to_config() must give exactly this, keys in this order.
CPU_DICT = {
    "n_regions": 64, "initial_images": 5, "reduce": "max", "head_only": True,
    "warm_start": True, "fig6_initial_regions": 192, "figure_slices": 3, "model": "unet2d",
    "model_kwargs": {"base_width": 8, "depth": 3, "dropout": 0.5}, "size": 64,
    "max_slices": {"train": 40, "val": 8, "test": 40}, "batch_size": 4, "lr": 1e-3,
    "epochs": 4, "epoch_items": 24, "patience": None, "n_samples": 8, "score_batch_size": 16,
    "loss_balance": "class", "per_cycle": 10, "cycles": 3, "fig6_regions": [16, 64, 256],
    "full_epochs": 30, "full_patience": None,
}


def test_profiles_are_typed_and_to_config_is_the_old_dict():
    assert set(p1.PROFILES) == {"cpu", "reference", "gpu", "paper"}
    assert all(isinstance(s, P1Settings) for s in p1.PROFILES.values())
    cfg = p1.settings("cpu").to_config()
    assert json.dumps(cfg) == json.dumps(CPU_DICT)  # same keys, order and values
    # reference = cpu with these differences only (P1 reference run, book/plan.yml)
    ref = p1.settings("reference").to_config()
    diff = {k: v for k, v in ref.items() if CPU_DICT[k] != v}
    assert diff == {"size": 96, "max_slices": {"train": 96, "val": 16, "test": 80},
                    "epochs": 5, "epoch_items": 32, "per_cycle": 16, "cycles": 6,
                    "full_epochs": 40}
    paper = p1.settings("paper")  # P1 Implementation Details / Sec. 5
    assert (paper.model, paper.size, paper.n_regions, paper.initial_images, paper.per_cycle,
            paper.cycles, paper.epochs, paper.batch_size, paper.lr) == (
        "fcn8_vgg16", 352, 64, 5, 5, 100, 40, 1, 1e-4)
    assert paper.max_slices == {"train": None, "val": None, "test": None}


def test_overrides_are_applied_copied_and_frozen():
    s = p1.settings("cpu", {"cycles": 2, "fig6_regions": [16, 64]})
    assert s.cycles == 2 and s.fig6_regions == (16, 64)  # a JSON list becomes a tuple
    assert p1.PROFILES["cpu"].cycles == 3
    assert s.model_kwargs is not p1.PROFILES["cpu"].model_kwargs  # never shared
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.cycles = 5  # type: ignore[misc]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"cycle": 2}, r"unknown override key\(s\) \['cycle'\]; known: \[.*'cycles'"),
    ({"cycles": "2"}, r"p1 setting cycles='2': expected int"),
    ({"cycles": True}, r"p1 setting cycles=True: expected int"),
    ({"lr": 0}, r"p1 setting lr=0: expected a finite number > 0"),
    ({"model": "vgg"}, r"p1 setting model='vgg': expected one of 'unet2d', 'fcn8_vgg16'"),
    ({"n_regions": 60}, r"p1 setting n_regions=60: expected perfect squares"),
    ({"fig6_regions": [16, 20]}, r"p1 setting fig6_regions=\(16, 20\)"),
    ({"max_slices": {"train": 4}}, r"max_slices=\{'train': 4\}: needs exactly the keys"),
    ({"max_slices": {"train": 0, "val": 1, "test": 1}}, r"max_slices\['train'\]=0"),
    ({"full_patience": 0}, r"full_patience=0: None or an integer >= 1"),
    ({"epochs": 0}, r"epochs=0: expected an integer >= 1"),
])
def test_bad_names_and_values_are_named(overrides, message):
    with pytest.raises(SettingsError, match=message):
        p1.settings("cpu", overrides)


def test_unknown_profile_and_variant_key():
    with pytest.raises(ValueError, match=r"unknown profile 'tpu'; choose one of \['cpu', "):
        p1.settings("tpu")
    with pytest.raises(SettingsError, match=r"\['sizes'\]"):
        _variant(p1.PROFILES["cpu"], sizes=96)


def test_al_config_takes_the_run_fields_only():
    s = p1.settings("cpu")
    cfg = p1.al_config("synthetic", "sep", s, heuristic="random", seed=4, n_regions=16)
    assert (cfg.split, cfg.heuristic, cfg.seed, cfg.n_regions, cfg.cycles, cfg.size) == (
        "sep", "random", 4, 16, 3, 64)
    assert set(s.run_fields()) == set(p1.RUN_KEYS) and "full_epochs" not in p1.RUN_KEYS
    # the cache key of the cpu profile's first Fig. 5 run, as computed before the typed
    # settings (invariant: typed settings must not change any cache key)
    key = {"version": p1.VERSION, "run": p1.al_config("synthetic", "mixed", s).to_dict()}
    assert config_hash(key) == config_hash(
        {"version": p1.VERSION, "run": {**dataclasses.asdict(p1.ALConfig()), **{
            k: CPU_DICT[k] for k in p1.RUN_KEYS}, "dataset": "synthetic", "split": "mixed"}})
    with pytest.raises(TypeError, match="expected P1Settings"):
        p1.al_config("synthetic", "mixed", CPU_DICT)  # type: ignore[arg-type]


def test_ceiling_changes_read_the_full_run_settings(monkeypatch):
    monkeypatch.setattr(p1, "load_data", lambda *a, **k: SimpleNamespace(train=list(range(7))))
    s = p1.settings("cpu", {"full_patience": 4, "full_epochs": 12})
    assert p1.ceiling_changes("synthetic", "mixed", s) == {
        "patience": 4, "initial_images": 7, "cycles": 0, "epochs": 12, "epoch_items": None}
