"""The point-labelling widget of P1's region-based active learning loop.

* :class:`LabelSession` (headless): P1's loop on the active-learning core
  (:class:`covidlib.active_loop.ActiveLoop`, step mode, the person as the oracle): the pool,
  the model's proposals, click / background / undo / next, ``train_cycle()``; every answer
  saved at once to a JSON-lines file, the loop's state (model, cycles) optionally too.
* :class:`LabelWidget` (``covidlib.widgets.view``, needs ``anywidget``): the session on a
  canvas in Jupyter, with the uncertainty heat-map, zoom and keyboard shortcuts.
* :func:`simulate` with :class:`MaskOracle`: the same loop answered by P1's simulated
  annotator (the core's ground-truth oracle).
"""

from covidlib.widgets.annotations import Annotation, AnnotationStore
from covidlib.widgets.geometry import (
    body_mask,
    body_regions,
    canvas_size,
    canvas_to_image,
    image_to_canvas,
    zoom_view,
)
from covidlib.widgets.session import (
    Current,
    CycleResult,
    LabelSession,
    MaskOracle,
    Query,
    choose_pool,
    pretrain,
    simulate,
    small_unet,
)

__all__ = [
    "Annotation",
    "AnnotationStore",
    "Current",
    "CycleResult",
    "LabelSession",
    "LabelWidget",
    "MaskOracle",
    "Query",
    "body_mask",
    "body_regions",
    "canvas_size",
    "canvas_to_image",
    "choose_pool",
    "image_to_canvas",
    "pretrain",
    "simulate",
    "small_unet",
    "zoom_view",
]


def __getattr__(name: str):
    if name == "LabelWidget":  # anywidget is only needed for the view
        from covidlib.widgets.view import LabelWidget

        return LabelWidget
    raise AttributeError(f"module 'covidlib.widgets' has no attribute {name!r}")
