"""What the "Label your own slices" chapter glues, and the device its widget trains on.

:func:`widget_device` pins the demo to the CPU (the widget's small U-Net is sized for it);
:func:`prose_values` gives the settings the prose cites (from
:data:`covidlib.experiments.label_demo_settings.PROFILES`, the widget's
:data:`~covidlib.widgets.session_model.SMALL_UNET`, :data:`label_demo.TARGET_FRACTION` and
P1's values in ``covidlib/report/paper_values/p1.yaml``); :func:`chapter_values` adds the
chapter's measured numbers (:func:`label_demo.glue_values`) and the reference run's paragraph.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from covidlib.experiments import label_demo
from covidlib.experiments.label_demo_settings import PROFILES, LabelDemoSettings
from covidlib.report import paper_values
from covidlib.widgets.session_model import SMALL_UNET

__all__ = ["WIDGET_DEVICE", "chapter_values", "prose_values", "widget_device"]

WIDGET_DEVICE = "cpu"
"""The device the widget's model trains on (it is sized for two CPU cores)."""


def widget_device(device: str) -> str:
    """The device the demo runs on: ``"auto"`` and ``"cpu"`` give ``"cpu"``
    (:data:`WIDGET_DEVICE`; with ``"auto"`` on a machine with a CUDA device a warning says
    why it is not used); any other device is refused with the reason."""
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            warnings.warn("device='auto': this machine has a CUDA device, but the labelling "
                          "widget's small U-Net trains on the CPU (it is sized for two cores "
                          "and retrains between clicks)", stacklevel=2)
        return WIDGET_DEVICE
    if device == WIDGET_DEVICE:
        return WIDGET_DEVICE
    raise ValueError(f"device={device!r}: the labelling widget trains its small U-Net on the "
                     f"CPU between clicks, so this chapter runs on 'cpu'; pass device='auto' "
                     f"or 'cpu'")


def prose_values(profiles: Mapping[str, LabelDemoSettings] | None = None) -> dict[str, str]:
    """Glue values (name -> text): the ``cpu`` profile's slice size and answers per
    retraining cycle, the widget U-Net's channels and levels, the share of the best final
    Dice that makes the target, P1's seconds per answer and P1's AL cycles (Sec. 5.3)."""
    cpu = (PROFILES if profiles is None else profiles)["cpu"]
    f7 = paper_values.artifact("P1-F7")["values"]
    headline = paper_values.artifact("P1-headline")["values"]
    return {"label_demo_cpu_size": str(cpu.size),
            "label_demo_cpu_channels": str(SMALL_UNET["base_width"]),
            "label_demo_cpu_levels": str(SMALL_UNET["depth"]),
            "label_demo_target_share": f"{100 * label_demo.TARGET_FRACTION:.0f} %",
            "label_demo_seconds_per_answer": f"{f7['seconds_per_point']:g} s",
            "label_demo_p1_cycles": str(headline["cycles"]),
            "label_demo_cpu_per_cycle": str(cpu.regions_per_cycle)}


def _reference(dataset: str) -> Any:
    from IPython.display import Markdown

    from covidlib.report import reference

    return Markdown(reference.label_demo_paragraph(dataset))


def chapter_values(values: Mapping[str, Any], dataset: str, seed: int) -> dict[str, Any]:
    """Every glue value of the chapter: each of ``values`` (:func:`label_demo.glue_values`)
    and ``seed`` as ``label_demo_<key>`` and ``label_demo_<dataset>_<key>``, then
    ``label_demo_reference`` (the reference run, Markdown) and :func:`prose_values`."""
    measured = {**values, "seed": int(seed)}
    out: dict[str, Any] = {}
    for key, value in measured.items():
        out[f"label_demo_{key}"] = value
        out[f"label_demo_{dataset}_{key}"] = value
    out["label_demo_reference"] = _reference(dataset)
    out.update(prose_values())
    return out
