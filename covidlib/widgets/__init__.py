"""The point-labelling widget of P1's region-based active learning loop.

* :class:`LabelSession` (headless): the pool, the model's proposals, click / background /
  undo / next, ``train_cycle()``; every answer saved at once to a JSON-lines file.
* :class:`LabelWidget` (``covidlib.widgets.view``, needs ``anywidget``): the session on a
  canvas in Jupyter, with the uncertainty heat-map, zoom and keyboard shortcuts.
* :func:`simulate` with :class:`MaskOracle`: the same loop answered by P1's simulated
  annotator.
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
