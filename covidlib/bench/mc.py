"""MC-dropout acquisition speed: head-only sampling vs naive re-forwarding vs baal.

P1 Eq. 2 draws I predictions of the FCN8-VGG16 with dropout active. Three samplers of the same
network and the same input batch are timed at each I:

* ``head_only``: :func:`covidlib.models.mc_predict` with ``head_only=True`` (VGG16 + fc6 once,
  the dropout head I times);
* ``naive``: the same function with ``head_only=False`` (I full forward passes);
* ``baal``: baal's ``MCDropoutModule`` wrapping (a copy of) the same network, sampled by
  ``ModelWrapper.predict_on_batch(x, iterations=I)`` with baal's default
  ``replicate_in_memory=True`` (the batch is repeated I times and run as one forward pass).

Each sampler is timed with P1's whole acquisition step, as a region-AL cycle runs it: the I
softmax samples, the entropy of their mean (P1's U_i, after Eq. 2), its maximum in each of the
K regions and the choice of regions (:mod:`covidlib.acquisition`; head-only and naive through its
:func:`~covidlib.acquisition.score_pool`, baal's samples through the same functions). Head-only
and naive use the same seed, so their region scores must be equal and they must select the
same regions; both facts are recorded. baal draws its own dropout masks, so its samples are
only equal in distribution.

The network has random weights (timing does not depend on them); its score layers, which FCN8
starts at zero, are drawn at random too, so the predictions and entropies are not all equal.
The input is a batch of slices of the synthetic thorax phantom at the benchmark's image size.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from covidlib import acquisition
from covidlib.bench.measure import PeakMemory, synchronize
from covidlib.bench.settings import McBench
from covidlib.models import FCN8VGG16

METHODS = ("head_only", "naive", "baal")


def make_fcn8(fc_channels: int, seed: int) -> FCN8VGG16:
    """FCN8-VGG16 (``layout="same"``, P1's dropout 0.5) with random weights, score layers
    included, for timing."""
    torch.manual_seed(seed)
    model = FCN8VGG16(2, fc_channels=fc_channels, layout="same")
    for conv in (model.score_fr, model.score_pool4, model.score_pool3):
        nn.init.kaiming_normal_(conv.weight, nonlinearity="linear")
    return model.eval()


def phantom_batch(image_size: int, batch: int, seed: int = 0) -> torch.Tensor:
    """``(batch, 3, S, S)`` ImageNet-normalised lung-window slices of one phantom case."""
    from covidlib.data.phantom import PhantomConfig, generate_case
    from covidlib.data.torch_datasets import SliceDataset

    n_slices = max(8, batch)
    case = generate_case(PhantomConfig(n_cases=1, shape=(n_slices, 160, 160), seed=seed), 0)
    first = (n_slices - batch) // 2
    refs = [(case.case_id, z) for z in range(first, first + batch)]
    ds = SliceDataset([case], refs, size=image_size, progress=False)
    return torch.stack([torch.as_tensor(ds[i]["image"]) for i in range(batch)])


def baal_sampler(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor, int], Any]:
    """``f(x, I) -> (I, B, C, H, W)`` probabilities from baal's MCDropoutModule around a copy
    of ``model``; raises ``ImportError`` naming the extra when baal is not installed."""
    try:
        from baal.bayesian.dropout import MCDropoutModule
        from baal.modelwrapper import ModelWrapper, TrainingArgs
    except ImportError as exc:
        raise ImportError(
            f"baal is not installed ({exc}); install the dev extra: pip install -e '.[dev]'"
        ) from exc
    wrapper = ModelWrapper(
        MCDropoutModule(copy.deepcopy(model)),
        TrainingArgs(use_cuda=device.type == "cuda", replicate_in_memory=True),
    )
    wrapper.eval()

    def sample(x: torch.Tensor, n: int) -> torch.Tensor:
        out = wrapper.predict_on_batch(x, iterations=n)  # (B, C, H, W, I) logits
        return torch.softmax(out, dim=1).permute(4, 0, 1, 2, 3)

    return sample


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any, dict[str, Any]]:
    with PeakMemory(device) as mem:
        synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        synchronize(device)
        seconds = time.perf_counter() - t0
    return seconds, out, mem.record()


def bench_mc(settings: McBench, device: torch.device,
             progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Time the three samplers at each I of ``settings.samples``; see the module docstring.
    Returns the ``mc`` section of the results file."""
    size, batch, seed = settings.image_size, settings.batch, settings.seed
    k = settings.n_regions
    model = make_fcn8(settings.fc_channels, seed).to(device)
    x = phantom_batch(size, batch, seed).to(device)

    def pool(head_only: bool) -> Callable[[int], acquisition.PoolSelection]:
        return lambda n: acquisition.score_pool(model, x, n, head_only, seed, n_select=batch,
                                                n_regions=k, batch_size=batch, device=device)

    samplers: dict[str, Callable[[int], Any]] = {"head_only": pool(True), "naive": pool(False)}
    baal_note = None
    if settings.baal:
        try:
            baal_fn = baal_sampler(model, device)

            def baal_pool(n: int) -> list[tuple[int, int]]:
                u = acquisition.entropy_of_mean(baal_fn(x, n))
                return acquisition.select_regions(acquisition.region_scores(u, k), batch)

            samplers["baal"] = baal_pool
        except ImportError as exc:
            baal_note = str(exc)
    else:
        baal_note = "baal left out by the settings"

    progress("MC: warm-up")
    with torch.no_grad():
        for fn in samplers.values():  # one sample each: kernels and caches primed
            fn(1)
        synchronize(device)

    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    for n in settings.samples:
        outputs: dict[str, Any] = {}
        for method, fn in samplers.items():
            progress(f"MC: {method} I={n}")
            seconds, out, mem = _timed(lambda fn=fn, n=n: fn(n), device)
            outputs[method] = out
            rows.append({"method": method, "I": int(n), "batch": batch, "seconds": seconds,
                         "images_per_s": batch / seconds, **mem})
        head, naive = outputs["head_only"], outputs["naive"]
        checks.append({
            "I": int(n),
            "selection_head_only": [list(p) for p in head.selected],
            "selection_naive": [list(p) for p in naive.selected],
            "identical_selection": selections_agree(head.selected, naive.selected,
                                                    naive.scores),
            "exactly_the_same_regions": head.selected == naive.selected,
            "identical_region_scores": bool(np.array_equal(head.scores, naive.scores)),
            "max_abs_score_diff": float(np.abs(head.scores - naive.scores).max()),
        })
        del outputs, head, naive
    i_max = max(int(n) for n in settings.samples)
    t_head = next(r["seconds"] for r in rows if r["method"] == "head_only" and r["I"] == i_max)
    model.train()  # dropout active, as mc_predict runs it
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    split = breakdown(model, x, i_max, seed, t_head, device)
    model.eval()
    return {
        "what": ("images scored per second by P1's acquisition (I MC-dropout samples of "
                 "FCN8-VGG16, layout 'same', random weights; entropy of the mean; max per "
                 f"region of K={k}; region selection), and the selections of head-only vs "
                 "naive sampling with the same seed"),
        "settings": settings.record(),
        "methods": list(samplers),
        "baal_note": baal_note,
        "rows": rows,
        "speedup": speedups(rows),
        "selection": checks,
        "identical_selections": all(c["identical_selection"] for c in checks),
        "breakdown": split,
    }


def selections_agree(a: list[tuple[int, int]], b: list[tuple[int, int]], scores: np.ndarray,
                     rtol: float = 1e-6) -> bool:
    """Whether two region selections are the same up to ties: equal lists, or lists whose
    regions have the same scores (``scores[image, region]``) in order, within ``rtol`` of the
    largest score. Float sums in another order can swap two regions that tie (seen: a 2.5e-9
    difference between head-only and naive scores at I = 10 picked region 11 vs 37)."""
    if list(a) == list(b):
        return True
    if len(a) != len(b):
        return False
    s = np.asarray(scores, dtype=np.float64)
    tol = rtol * max(float(np.abs(s).max()), 1e-12)
    sa = np.array([s[i, r] for i, r in a])
    sb = np.array([s[i, r] for i, r in b])
    return bool(np.all(np.abs(sa - sb) <= tol))


def breakdown(model: FCN8VGG16, x: torch.Tensor, n: int, seed: int, total: float,
              device: torch.device, repeats: int = 3) -> dict[str, Any]:
    """Where head-only MC scoring at I = ``n`` spends its ``total`` seconds: the backbone
    (VGG16 + fc6, once), the I dropout heads (:meth:`FCN8VGG16.head_samples`), of which the
    Bernoulli draws of the two dropout layers alone (:meth:`FCN8VGG16.draw_masks`), and the
    rest (softmax, entropy of the mean, region maxima, selection). Each part is the best of
    ``repeats`` timings.

    Also the limit of the naive / head-only ratio (:func:`ratio_limit`), from the FLOPs of
    the backbone and of one head (``limit_flops``) and from their measured times
    (``limit_times``: one head alone ``head_one_s``, the I heads as batched by head-only)."""
    def best(fn: Callable[[], Any]) -> float:
        times = []
        for _ in range(repeats):
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - t0)
        return min(times)

    with torch.no_grad():
        feats = model.backbone_features(x)
        ones = torch.ones_like(feats.fc6)
        backbone = best(lambda: model.backbone_features(x))
        heads = best(lambda: model.head_samples(feats, n, seed=seed))
        head_one = best(lambda: model.head(feats))
        masks = torch.empty((n, *ones.shape), device=ones.device)
        draws = best(lambda: model.draw_masks(masks, torch.empty_like(masks), seed, 0))
        flops = {"backbone": count_flops(lambda: model.backbone_features(x)),
                 "head": count_flops(lambda: model.head(feats))}
    parts = {"backbone_s": backbone, "heads_s": heads, "bernoulli_s": draws,
             "rest_s": max(0.0, total - backbone - heads)}
    return {"I": int(n), "total_s": total, **parts, "head_one_s": head_one,
            "fractions": {k.removesuffix("_s"): v / total for k, v in parts.items()},
            "flops": flops,
            "limit_flops": ratio_limit(flops["backbone"], flops["head"], n),
            "limit_times": ratio_limit(backbone, head_one, n, heads)}


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``fn`` (``torch.utils.flop_counter``: a
    multiply-add counts 2; convolutions and matrix products, what dominates FCN8)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def ratio_limit(backbone: float, head: float, n: int, heads: float | None = None) -> float:
    """The most head-only sampling can gain over naive re-forwarding at I = ``n``: naive runs
    backbone + head I times, head-only the backbone once and the heads (``heads``: their
    cost together, default ``n * head``); everything else (softmax, entropy, selection)
    taken as free. ``I (b + h) / (b + I h)`` -> ``(b + h) / h`` as I grows."""
    heads = n * head if heads is None else heads
    return n * (backbone + head) / (backbone + heads)


def speedups(rows: list[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """``{"naive_over_head_only": {I: t_naive / t_head}, "baal_over_head_only": {...}}``
    computed from the measured seconds (keys are I as strings, for JSON)."""
    by = {(r["method"], int(r["I"])): float(r["seconds"]) for r in rows}
    out: dict[str, dict[str, float]] = {}
    for other in ("naive", "baal"):
        ratios = {str(n): by[(other, n)] / by[("head_only", n)]
                  for (m, n) in by if m == other and ("head_only", n) in by}
        if ratios:
            out[f"{other}_over_head_only"] = ratios
    return out
