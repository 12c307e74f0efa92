"""Tables and figures of the book's "Performance" page, drawn from a benchmark results file.

Every number shown comes from the results file written by ``make bench``
(:func:`covidlib.bench.run.run_suite`) or from the book's own timing files
(:mod:`covidlib.bench.endtoend`); ratios are recomputed here from the measured times, and a
figure that was not measured (no CUDA device found, baal not installed) is shown as "not
measured" with the reason, never filled in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from covidlib.bench.report_base import (  # noqa: F401  (re-exported: the page's names)
    _COLOURS,
    _LABELS,
    BENCH_GOAL_S,
    HOW_TO,
    MC_GOAL,
    NOT_MEASURED,
    TRAIN_GOAL,
    _note,
    _sig,
    load_results,
    missing_section,
)
from covidlib.bench.report_widget import (  # noqa: F401  (re-exported: the page's names)
    RESPONSIVE_MISSING,
    _responsiveness_goals,
    _verdict,
    responsiveness_markdown,
    responsiveness_table,
)


def how_to_produce(path: str | Path) -> str:
    """Markdown telling the reader how to produce the missing results file."""
    return HOW_TO.format(path=path)


def machine_markdown(res: Mapping[str, Any] | None, path: str | Path = "") -> str:
    """One paragraph naming the machine, the date, the load and the run's total time (how to
    produce the results file when ``res`` is None)."""
    if res is None:
        return how_to_produce(path)
    m = res["machine"]
    gpu = (f"GPU **{m['gpu']}**" if m.get("gpu")
           else "**no CUDA device was found on this machine** (CPU only)")
    load = m.get("load_average_start")
    load_txt = (f" Load average (1 min) at the start: {load[0]:.2f} on {m['cores']} cores"
                f"{' (the machine was shared: figures are noisy)' if load[0] > 1.5 else ''}."
                if load else "")
    quick = (" **This is a `--quick` run with tiny sizes: its figures mean nothing.**"
             if res.get("quick") else "")
    return (f"Measured on **{m['hostname']}**: {m['cpu']}, {m['cores']} cores, torch threads "
            f"{m['torch_threads']}, {gpu}; torch {m['torch']}, Python {m['python']}; "
            f"{m['date']}. The whole suite took {res['total_seconds'] / 60:.1f} min."
            f"{load_txt}{quick}")


def gpu_statement(res: Mapping[str, Any] | None, gpu_timings: Mapping[str, Any] | None) -> str:
    """Plain words on whether GPU figures exist, and where they come from."""
    if res is not None and res["machine"].get("gpu"):
        bench = (f"The GPU figures below were measured on {res['machine']['gpu']} on "
                 f"{res['machine']['date'][:10]}.")
    else:
        bench = ("**GPU figures were not measured: no CUDA device was found on the machine "
                 "that ran `make bench`.** "
                 "The CUDA paths (fp32 eager vs bf16 autocast + channels_last, with and without "
                 "torch.compile; `torch.cuda.max_memory_allocated`) run when `make bench` finds "
                 "CUDA; the tables show \"not measured\" instead of a figure.")
    if gpu_timings is None:
        book = (" No `gpu`-profile book run was recorded, so the gpu profile's wall time and the "
                "paper profile's projection on one GPU cannot be given.")
    else:
        book = (f" The gpu-profile book timings come from {gpu_timings['file']} "
                f"(written {gpu_timings['written']}).")
    return bench + book


# ------------------------------------------------------------------------------- MC dropout


def mc_table(res: Mapping[str, Any] | None) -> pd.DataFrame | Any:
    """Images/s of each sampler at each I, the speed-ups over naive and baal (recomputed from
    the measured seconds) and whether head-only and naive selected the same regions."""
    if (msg := missing_section(res, "mc")) is not None:
        return _note(msg)
    mc = res["mc"]
    by = {(r["method"], r["I"]): r for r in mc["rows"]}
    same = {c["I"]: c["identical_selection"] for c in mc["selection"]}
    rows = []
    for n in mc["settings"]["samples"]:
        head = by[("head_only", n)]
        row: dict[str, Any] = {"I": n}
        for method in ("head_only", "naive", "baal"):
            r = by.get((method, n))
            row[f"{_LABELS[method]} (images/s)"] = (_sig(r["images_per_s"]) if r
                                                     else NOT_MEASURED)
        for method in ("naive", "baal"):
            r = by.get((method, n))
            row[f"speed-up vs {method}"] = (round(r["seconds"] / head["seconds"], 2) if r
                                            else NOT_MEASURED)
        row["same regions selected (head-only vs naive)"] = "yes" if same.get(n) else "NO"
        rows.append(row)
    return pd.DataFrame(rows).set_index("I")


def mc_verdict(res: Mapping[str, Any] | None) -> str:
    """The goal (>= 10x naive at I = 20 with identical selections) in words."""
    if (msg := missing_section(res, "mc")) is not None:
        return msg
    mc = res["mc"]
    i_max = max(mc["settings"]["samples"])
    ratio = mc["speedup"]["naive_over_head_only"][str(i_max)]
    same = mc["identical_selections"]
    met = ratio >= MC_GOAL and same
    st = mc["settings"]
    net = (f"FCN8-VGG16 at {st['image_size']} x {st['image_size']} px, fc {st['fc_channels']}, "
           f"batch {st['batch']}, {res['machine']['gpu'] or 'CPU'}")
    return (f"{net}. At I = {i_max}, head-only sampling scored images {ratio:.1f}x as fast as "
            f"naive re-forwarding (goal: >= {MC_GOAL:.0f}x): goal {'met' if met else 'NOT met'}; "
            f"head-only and naive samples of the same seed "
            f"{'selected the same regions' if same else 'selected DIFFERENT regions'} at every I.")


def mc_breakdown(res: Mapping[str, Any] | None) -> str:
    """In words: what fraction of head-only MC scoring the backbone, the I dropout heads (and
    their Bernoulli draws alone) and the acquisition arithmetic take."""
    split = (res or {}).get("mc", {}).get("breakdown")
    if not split:
        return ""
    f = split["fractions"]
    return (f"Where the time of head-only scoring goes at I = {split['I']} "
            f"({split['total_s']:.3g} s in all): the backbone (VGG16 + fc6, once) "
            f"{100 * f['backbone']:.0f} %, the {split['I']} dropout heads (fc7, score layers, "
            f"up-sampling) {100 * f['heads']:.0f} %, of which the Bernoulli draws of the two "
            f"dropout layers alone {100 * f['bernoulli']:.0f} %, and the entropy of the mean, "
            f"the region maxima and the selection {100 * f['rest']:.0f} %. The naive re-forward "
            "runs the backbone I times, so its ratio to head-only is bounded by how much of "
            "head-only's time is not backbone." + mc_limit(split))


def mc_limit(split: Mapping[str, Any]) -> str:
    """The most head-only can gain over naive at the breakdown's I, in words, from the FLOPs
    and from the measured times of the backbone and one head (``covidlib.bench.mc.ratio_limit``:
    ``I (b + h) / (b + I h)``); empty for results files without them."""
    if "flops" not in split:
        return ""
    n, fl = split["I"], split["flops"]
    return (f" Even with the entropy and the selection free, no head-only sampler can be more "
            f"than I (b + h) / (b + I h) times as fast as naive: with the backbone's "
            f"{fl['backbone'] / 1e9:.3g} GFLOP (b) and one head's {fl['head'] / 1e9:.3g} GFLOP "
            f"(h) that is {split['limit_flops']:.1f}x at I = {n}; with their measured times "
            f"(backbone {split['backbone_s']:.3g} s, one head {split['head_one_s']:.3g} s, the "
            f"{n} heads batched {split['heads_s']:.3g} s) it is {split['limit_times']:.1f}x.")


def mc_figure(res: Mapping[str, Any] | None) -> Figure | None:
    """Left: images/s against I per sampler (log scale). Right: speed-ups over naive and baal."""
    if missing_section(res, "mc") is not None:
        return None
    mc = res["mc"]
    samples = mc["settings"]["samples"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for method in mc["methods"]:
        pts = sorted((r["I"], r["images_per_s"]) for r in mc["rows"] if r["method"] == method)
        ax.plot(*zip(*pts, strict=True), "o-", color=_COLOURS[method], label=_LABELS[method])
    ax.set(xlabel="MC-dropout samples I", ylabel="images scored per second", yscale="log",
           xticks=samples, title=f"FCN8-VGG16, {mc['settings']['image_size']} px")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    width = 0.38
    x = np.arange(len(samples))
    for j, key in enumerate(("naive_over_head_only", "baal_over_head_only")):
        ratios = mc["speedup"].get(key)
        if not ratios:
            continue
        vals = [ratios[str(n)] for n in samples]
        method = key.split("_over_")[0]
        bars = bx.bar(x + (j - 0.5) * width, vals, width, color=_COLOURS[method],
                      label=f"vs {_LABELS[method]}")
        bx.bar_label(bars, fmt="%.1fx", fontsize=9)
    bx.axhline(MC_GOAL, color="k", ls="--", lw=1, label=f"goal {MC_GOAL:.0f}x (vs naive, I=20)")
    bx.axhline(1.0, color="grey", lw=0.8)
    bx.set(xticks=x, xticklabels=[f"I={n}" for n in samples], ylabel="speed-up of head-only",
           title="head-only speed-up (same run, same machine)")
    bx.legend(fontsize=9)
    return fig


# ------------------------------------------------------------------------------- training


def train_table(res: Mapping[str, Any] | None) -> pd.DataFrame | Any:
    """Images/s, speed-up over fp32 eager and peak memory of each network and mode; the CUDA
    modes are listed as "not measured" when no CUDA device was found."""
    if (msg := missing_section(res, "train")) is not None:
        return _note(msg)
    tr = res["train"]
    base = {r["network"]: r["images_per_s"] for r in tr["rows"]
            if r["mode"] == "fp32_eager" and "images_per_s" in r}
    modes = list(tr.get("modes") or ["fp32_eager"])
    modes += [m for m in ("bf16_channels_last", "bf16_channels_last_compile") if m not in modes]
    rows = []
    for net in tr["settings"]["networks"]:
        for mode in modes:
            r = next((r for r in tr["rows"] if r["network"] == net and r["mode"] == mode), None)
            if r is None or "images_per_s" not in r:
                why = (r.get("error") or r.get("skipped")) if r else (
                    "no CUDA device was found on this machine")
                rows.append({"network": net, "mode": mode, "input": "", "batch": "",
                             "images/s": NOT_MEASURED, "speed-up vs fp32": "",
                             "peak RSS (MB)": "", "CUDA max allocated (MB)": "", "note": why})
                continue
            rows.append({
                "network": net, "mode": mode, "input": "x".join(map(str, r["input"])),
                "batch": r["batch"], "images/s": _sig(r["images_per_s"]),
                "speed-up vs fp32": round(r["images_per_s"] / base[net], 2),
                "peak RSS (MB)": r["peak_rss_mb"],
                "CUDA max allocated (MB)": (
                    r["cuda_max_allocated_mb"] if r["cuda_max_allocated_mb"] is not None
                    else "CPU run"),
                "note": f"{tr['device']}, {tr['torch_threads']} torch threads"})
    return pd.DataFrame(rows).set_index(["network", "mode"])


# ------------------------------------------------------------------------------- memory


def memory_table(res: Mapping[str, Any] | None) -> pd.DataFrame | None:
    """Peak memory of every measured block: process RSS at its peak, what the block added to
    the RSS it started with, and CUDA's max allocated (GPU runs)."""
    if res is None:
        return None
    rows = []

    def add(section: str, what: str, r: Mapping[str, Any]) -> None:
        cuda = r.get("cuda_max_allocated_mb")
        rows.append({"benchmark": section, "what": what, "peak RSS (MB)": r["peak_rss_mb"],
                     "added during the block (MB)": round(r["peak_rss_mb"] - r["rss_start_mb"], 1),
                     "CUDA max allocated (MB)": cuda if cuda is not None else NOT_MEASURED})

    if "mc" in res:
        for r in res["mc"]["rows"]:
            add("MC dropout", f"{_LABELS[r['method']]}, I={r['I']}", r)
    if "train" in res:
        for r in res["train"]["rows"]:
            if "peak_rss_mb" in r:
                add("training", f"{r['network']} {r['mode']}, batch {r['batch']}", r)
    if "al_scaling" in res:
        for r in res["al_scaling"]["pool"]["rows"]:
            add("AL cycle", f"pool {r['pool']}, K={r['K']}", r)
    if "volume_scaling" in res:
        for r in res["volume_scaling"]["rows"]:
            add("3D scoring", f"{r['size']}^3", r)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------- scaling


_AL_PARTS = (("cycle", "seconds", "whole cycle (train + score + select)", "tab:blue"),
             ("acquisition", "acquisition_seconds", "score + select", "tab:green"))


def _panels(res: Mapping[str, Any]) -> list[tuple[str, str, list[tuple[str, list[float],
                                                                         list[float], Any, str]]]]:
    """``(title, x label, [(series label, sizes, seconds, fit, colour), ...])`` per panel."""
    out = []
    if "al_scaling" in res:
        al = res["al_scaling"]
        for key, xkey, title, xlabel in (
                ("pool", "pool", "AL cycle vs pool size", "slices in the pool"),
                ("regions", "K", "AL cycle vs region count K",
                 f"K (pool of {al['regions']['rows'][0]['pool']} slices)")):
            rows = al[key]["rows"]
            out.append((title, xlabel, [
                (label, [r[xkey] for r in rows], [r[col] for r in rows], al[key]["fit"][part],
                 colour) for part, col, label, colour in _AL_PARTS]))
    if "volume_scaling" in res:
        vs = res["volume_scaling"]
        out.append(("3D scoring vs volume size", "voxels (D^3)", [
            ("P3 volume score", [r["voxels"] for r in vs["rows"]],
             [r["seconds"] for r in vs["rows"]], vs["fit"], "tab:purple")]))
    return out


def scaling_table(res: Mapping[str, Any] | None) -> pd.DataFrame | Any:
    """The fitted log-log exponents (time ~ a * n^b) with their R^2 and the measured times."""
    if res is None:
        return None
    panels = _panels(res)
    if not panels:
        return _note(missing_section(res, "al_scaling") or "")
    rows = [{"series": f"{title}: {label}", "x": xlabel,
             "sizes": ", ".join(f"{v:g}" for v in xs),
             "seconds": ", ".join(f"{t:.3g}" for t in ts),
             "exponent b": round(fit["exponent"], 2), "R^2 (log-log)": round(fit["r2"], 3)}
            for title, xlabel, series in panels for label, xs, ts, fit, _c in series]
    if "al_scaling" in res:
        for key, xkey in (("pool", "pool"), ("regions", "K")):
            al = res["al_scaling"][key]
            fs = al["fit"]["select"]
            rows.append({"series": f"selection alone vs {xkey}", "x": xkey,
                         "sizes": ", ".join(f"{r[xkey]:g}" for r in al["rows"]),
                         "seconds": ", ".join(f"{r['select_seconds']:.3g}" for r in al["rows"]),
                         "exponent b": round(fs["exponent"], 2),
                         "R^2 (log-log)": round(fs["r2"], 3)})
    return pd.DataFrame(rows).set_index("series")


def scaling_figure(res: Mapping[str, Any] | None) -> Figure | None:
    """One log-log panel per size axis: measured times and fitted lines with their exponent."""
    panels = _panels(res) if res is not None else []
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.0),
                             constrained_layout=True, squeeze=False)
    for ax, (title, xlabel, series) in zip(axes[0], panels, strict=True):
        for label, xs, ts, fit, colour in series:
            ax.loglog(xs, ts, "o", color=colour)
            grid = np.geomspace(min(xs), max(xs), 50)
            ax.loglog(grid, fit["prefactor"] * grid ** fit["exponent"], "-", color=colour,
                      label=f"{label}: t ~ n^{fit['exponent']:.2f}")
        xs = series[0][1]
        ax.set(title=title, xlabel=xlabel, ylabel="seconds")
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelrotation=30 if max(xs) >= 1e4 else 0)
        ax.legend(fontsize=8, title="dots: measured; lines: fit", title_fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    return fig


# ------------------------------------------------------------------------------- end to end


def end_to_end_table(timings: Mapping[str, Any] | None) -> pd.DataFrame | None:
    """Per-chapter seconds of the last ``covidlib book`` run (``None`` when not run; the
    summary sentence says so)."""
    if timings is None:
        return None
    df = pd.DataFrame(timings["chapters"]).set_index("chapter")
    return df.sort_values("seconds", ascending=False)


def config_times_table(results_dir: str | Path) -> pd.DataFrame | Any:
    """Compute time of the cached experiment configurations, per kind and profile (what a
    projection of another profile's total starts from)."""
    from covidlib.bench.endtoend import config_times

    rows = config_times(results_dir)
    if not rows:
        return _note(f"No cached experiment results in `{results_dir}` yet.")
    df = pd.DataFrame(rows).set_index(["kind", "profile"])
    return df.round({"total_seconds": 1, "max_seconds": 1})


def end_to_end_summary(timings: Mapping[str, Any] | None, profile: str) -> str:
    """The book's time against its goal, in words."""
    if timings is None:
        return f"`{profile}` profile: {NOT_MEASURED} (the book was not run with it)."
    goal = timings["goal_seconds"]
    n = len(timings["chapters"])
    if timings["wall_seconds"] is not None:
        wall = timings["wall_seconds"] + (timings.get("html_seconds") or 0.0)
        workers = timings.get("workers")
        on = f" on {workers} worker{'s' if workers != 1 else ''}" if workers else ""
        html = (f" ({timings['wall_seconds'] / 60:.1f} min of notebooks{on} + "
                f"{timings['html_seconds']:.0f} s of HTML build)"
                if timings.get("html_seconds") is not None else f" (notebooks{on})")
        verdict = f"wall time {wall / 60:.1f} min{html}"
        met = wall <= goal if goal else None
    else:
        verdict = (f"wall time not recorded; it lies between the longest chapter "
                   f"({timings['max_seconds'] / 60:.1f} min) and the sum of all chapters "
                   f"({timings['sum_seconds'] / 60:.1f} min)")
        met = (True if timings["sum_seconds"] <= goal else
               False if timings["max_seconds"] > goal else None) if goal else None
    goal_txt = "" if goal is None else (
        f"; goal <= {goal / 60:.0f} min: " + {True: "met", False: "NOT met",
                                              None: "undecided (wall time unknown)"}[met])
    status = "" if timings["all_ok"] else " Some chapters failed in that run."
    inc = timings.get("incremental")
    rebuild = (f" The last rebuild: {inc.get('reused')} chapters reused, {inc.get('executed')} "
               f"executed, {float(inc['wall_seconds']):.1f} s of notebooks (unchanged chapters "
               "are not executed again)." if inc and "wall_seconds" in inc else "")
    return (f"`{profile}` profile, {n} chapters, run written {timings['written']}: "
            f"{verdict}{goal_txt}.{status}{rebuild}")


def end_to_end_figure(timings: Mapping[str, Any] | None) -> Figure | None:
    """Horizontal bars: seconds per chapter (``None`` when the book was not run)."""
    if timings is None:
        return None
    ch = sorted(timings["chapters"], key=lambda c: c["seconds"])
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(ch) + 1.2), constrained_layout=True)
    colours = ["tab:blue" if c["status"] == "ok" else "tab:red" for c in ch]
    bars = ax.barh([c["chapter"] for c in ch], [c["seconds"] for c in ch], color=colours)
    ax.bar_label(bars, fmt="%.0f s", fontsize=9)
    ax.margins(x=0.12)
    ax.set(xlabel="seconds (red: failed)" if "tab:red" in colours else "seconds",
           title=f"{timings['profile']} profile: time per chapter")
    return fig


# ------------------------------------------------------------------------------- goals


def goals_table(res: Mapping[str, Any] | None, cpu: Mapping[str, Any] | None,
                gpu: Mapping[str, Any] | None) -> pd.DataFrame:
    """Each goal of the performance issue, the measured figure and whether it is met."""
    rows = []
    if res is not None and "mc" in res:
        i_max = max(res["mc"]["settings"]["samples"])
        r = res["mc"]["speedup"]["naive_over_head_only"][str(i_max)]
        ok = r >= MC_GOAL and res["mc"]["identical_selections"]
        split = res["mc"].get("breakdown") or {}
        limit = (f" (limit from FLOPs at I={split['I']}: {split['limit_flops']:.1f}x)"
                 if "limit_flops" in split else "")
        rows.append(("MC dropout: head-only >= 10x naive at I=20, same selections up to ties",
                     f"{r:.1f}x, identical: {res['mc']['identical_selections']}{limit}",
                     "met" if ok else "NOT met"))
    if res is not None and "train" in res:
        sp = res["train"]["speedup"]
        if res["train"]["cuda_measured"] and sp:
            best = {n: max(v.values()) for n, v in sp.items()}
            ok = all(b >= TRAIN_GOAL for b in best.values())
            rows.append(("training: bf16 + channels_last >= 2.5x fp32 on CUDA",
                         ", ".join(f"{n} {b:.1f}x" for n, b in best.items()),
                         "met" if ok else "NOT met"))
        else:
            rows.append(("training: bf16 + channels_last >= 2.5x fp32 on CUDA", NOT_MEASURED,
                         "no CUDA device was found"))
            if sp:  # the CPU modes of the engine's Acceleration switch
                rows.append(("training on CPU: channels_last / torch.compile vs fp32 eager "
                             "(same run)", "; ".join(
                                 f"{n}: " + ", ".join(f"{m.removeprefix('fp32_')} {v:.2f}x"
                                                      for m, v in r.items())
                                 for n, r in sp.items()), "measured"))
    if res is not None:
        t = res["total_seconds"]
        ok = t <= BENCH_GOAL_S
        rows.append(("make bench <= 10 min on CPU", f"{t / 60:.1f} min",
                     ("met" if ok else "NOT met") if not res["machine"].get("gpu") else
                     "GPU run"))
    for profile, timings in (("cpu", cpu), ("gpu", gpu)):
        goal = 8 if profile == "cpu" else 20
        name = f"whole book, {profile} profile <= {goal} min"
        if timings is None:
            gpu_found = res is not None and bool(res["machine"].get("gpu"))
            rows.append((name, NOT_MEASURED, "not run" if profile == "cpu" or gpu_found
                         else "no CUDA device was found"))
            continue
        wall = timings["wall_seconds"]
        shown = (f"{wall / 60:.1f} min" if wall is not None else
                 f"{timings['max_seconds'] / 60:.1f}-{timings['sum_seconds'] / 60:.1f} min")
        hi = wall if wall is not None else timings["sum_seconds"]
        lo = wall if wall is not None else timings["max_seconds"]
        verdict = "met" if hi <= goal * 60 else "NOT met" if lo > goal * 60 else "undecided"
        rows.append((name, shown, verdict))
        inc = timings.get("incremental")
        if inc and isinstance(inc.get("wall_seconds"), int | float):
            rows.append((f"book rebuild with nothing changed, {profile} profile <= 20 s",
                         f"{inc['wall_seconds']:.0f} s ({inc.get('reused')} chapters reused, "
                         f"{inc.get('executed')} executed)",
                         "met" if inc["wall_seconds"] <= 20 and not inc.get("executed")
                         else "not a no-change rebuild" if inc.get("executed") else "NOT met"))
    rows += _responsiveness_goals(res)
    if res is not None and "determinism" in res:
        rows.append(("same seed on CPU -> identical results files",
                     "identical" if res["determinism"]["identical"] else "DIFFERENT",
                     "met" if res["determinism"]["identical"] else "NOT met"))
    return pd.DataFrame(rows, columns=["goal", "measured", "verdict"]).set_index("goal")


def determinism_markdown(res: Mapping[str, Any] | None) -> str:
    """The determinism check in words, with the two digests."""
    if (msg := missing_section(res, "determinism")) is not None:
        return msg
    d = res["determinism"]
    a, b = d["sha256"]
    word = "identical" if d["identical"] else "DIFFERENT"
    return (f"Two runs of the same seeded experiment on CPU ({d['what']}) gave **{word}** "
            f"results: sha256 `{a[:16]}…` and `{b[:16]}…`. The test suite checks the same "
            "(`tests/test_bench.py`).")
