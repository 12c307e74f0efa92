"""Determinism check: the same seeded experiment run twice on CPU gives identical results.

:func:`seeded_experiment` is a complete (tiny) experiment as the book runs them: slices of two
synthetic phantom cases, a small 2D U-Net trained by :func:`covidlib.engine.fit` with Adam and
cross-entropy, the best validation epoch kept, scores on held-out slices, and the result stored
through :class:`covidlib.cache.ResultCache` keyed by its full configuration. The stored record's
``meta`` holds the finish time and wall seconds, the only parts that may differ between runs;
:func:`result_bytes` is the rest of the record (configuration and result) as canonical JSON, and
:func:`check_determinism` runs the experiment in two fresh results folders and compares those
bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from covidlib.cache import ResultCache

KIND = "bench-determinism"
DEFAULTS: dict[str, Any] = {"size": 48, "slices": 8, "width": 4, "epochs": 2, "steps": 3,
                            "batch_size": 4}


def _finite(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict's tensors (names, shapes, dtypes and bytes, in key order)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def experiment_config(seed: int, **overrides: Any) -> dict[str, Any]:
    """The full configuration of :func:`seeded_experiment` (unknown keys -> ``ValueError``)."""
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"seeded_experiment: unknown settings {unknown}; known: {sorted(DEFAULTS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seeded_experiment: seed={seed!r} must be an integer >= 0")
    s = {**DEFAULTS, **overrides}
    return {"dataset": "phantom", "phantom": {"n_cases": 2, "shape": [s["slices"], 48, 48],
                                              "seed": 0},
            "split": "case 0: train, case 1: val (first half) / test (second half)",
            "model": "unet2d", "model_kwargs": {"base_width": s["width"], "depth": 2},
            "loss": "cross_entropy", "size": s["size"], "epochs": s["epochs"],
            "max_steps_per_epoch": s["steps"], "batch_size": s["batch_size"], "lr": 1e-3,
            "seed": seed, "device": "cpu"}


def _compute(cfg: Mapping[str, Any]) -> dict[str, Any]:
    from covidlib.data.phantom import PhantomConfig, generate_case
    from covidlib.data.torch_datasets import SliceDataset
    from covidlib.engine import evaluate, fit, supervised_loss
    from covidlib.models import UNet2D

    ph = cfg["phantom"]
    pcfg = PhantomConfig(n_cases=ph["n_cases"], shape=tuple(ph["shape"]), seed=ph["seed"])
    cases = [generate_case(pcfg, i) for i in range(ph["n_cases"])]
    z = ph["shape"][0]
    train = SliceDataset(cases, [(cases[0].case_id, k) for k in range(z)], size=cfg["size"],
                         progress=False)
    val = SliceDataset(cases, [(cases[1].case_id, k) for k in range(z // 2)], size=cfg["size"],
                       progress=False)
    test = SliceDataset(cases, [(cases[1].case_id, k) for k in range(z // 2, z)],
                        size=cfg["size"], progress=False)
    torch.manual_seed(cfg["seed"])
    model = UNet2D(3, 2, **cfg["model_kwargs"])
    res = fit(model, supervised_loss(F.cross_entropy), train, val, epochs=cfg["epochs"],
              lr=cfg["lr"], batch_size=cfg["batch_size"], device=cfg["device"],
              seed=cfg["seed"], max_steps_per_epoch=cfg["max_steps_per_epoch"], progress=False)
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in res.history]
    return _finite({
        "best_epoch": res.best_epoch,
        "best_score": res.best_score,
        "history": history,
        "test": evaluate(model, test, cfg["device"], batch_size=cfg["batch_size"]),
        "weights_sha256": state_sha256(res.best_state),
    })


def seeded_experiment(results_dir: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Run (or reuse) the tiny experiment in ``results_dir``; returns its result file."""
    cfg = experiment_config(seed, **overrides)
    cache = ResultCache(results_dir)
    cache.cached(KIND, cfg, lambda: _compute(cfg))
    return cache.path(KIND, cfg)


def result_bytes(path: str | Path) -> bytes:
    """A result file without its ``meta`` (finish time, wall seconds), as canonical JSON."""
    record = json.loads(Path(path).read_text())
    record.pop("meta", None)
    return json.dumps(record, sort_keys=True, indent=1).encode()


def check_determinism(seed: int = 0, root: str | Path | None = None, **overrides: Any
                      ) -> dict[str, Any]:
    """Run :func:`seeded_experiment` twice in fresh folders (``root/a`` and ``root/b``, kept;
    a temporary folder when ``root`` is None) and compare the result bytes."""
    with contextlib.ExitStack() as stack:
        if root is None:
            root = stack.enter_context(tempfile.TemporaryDirectory(prefix="covidlib-determinism-"))
        paths = [Path(root) / run for run in ("a", "b")]
        if any(p.exists() for p in paths):
            raise ValueError(f"check_determinism: {paths[0]} or {paths[1]} exists; the two runs "
                             "need fresh folders")
        digests = [hashlib.sha256(result_bytes(seeded_experiment(p, seed, **overrides)))
                   .hexdigest() for p in paths]
    return {
        "what": ("a tiny seeded experiment (phantom slices, UNet2D, engine.fit, cached result) "
                 "run twice on CPU in fresh results folders; sha256 of each result file "
                 "without its meta (finish time, wall seconds)"),
        "config": experiment_config(seed, **overrides),
        "sha256": digests,
        "identical": digests[0] == digests[1],
    }
