"""The labelling widget: a :class:`~covidlib.widgets.session.LabelSession` on a canvas.

Shows the slice (lung window) with the model's uncertainty heat-map (toggle, key ``h``) and
the region the model asks about outlined in red. Click on the infection inside the region
for a point label; ``b`` / "Background" tags the region as background; ``u`` undo, ``n``
next (skip), ``t`` train a cycle, ``z`` zoom on the region. Every label is in the
annotations file the moment it is given (see :mod:`covidlib.widgets.annotations`).

A training cycle runs in a background thread of the kernel
(:meth:`~covidlib.widgets.session.LabelSession.start_cycle`) with a progress bar: the
annotator keeps clicking on the region shown while the model trains; those labels are
saved at once and count in the next cycle. Labelling needs a running kernel; the static
book shows the widget's last state only.

The widget is an ``anywidget``: its state (images as PNG data URLs, region, labels) is
plain widget state, so an executed notebook shows it in the static book too.
"""

from __future__ import annotations

import base64
import io
import math
import threading
from typing import Any

import anywidget
import numpy as np
import traitlets as t

from covidlib.data.errors import DataError
from covidlib.widgets._frontend import CSS, ESM
from covidlib.widgets.geometry import canvas_size, canvas_to_image, zoom_view
from covidlib.widgets.session import LabelSession

__all__ = ["LabelWidget", "heatmap_rgba", "png_data_url"]


def png_data_url(array: np.ndarray) -> str:
    """A ``uint8`` gray ``(H, W)`` or RGBA ``(H, W, 4)`` array as a ``data:image/png`` URL."""
    from PIL import Image

    a = np.asarray(array)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 4):
        raise ValueError(f"png_data_url: expected uint8 (H, W) or (H, W, 4), got {a.dtype} "
                         f"{a.shape}")
    buf = io.BytesIO()
    # zlib level 3: ~12 ms for a 256 px RGBA heat-map where optimize=True took ~140 ms
    # (measured), so a click's redraw stays well inside the widget's 50 ms budget
    Image.fromarray(a, mode="L" if a.ndim == 2 else "RGBA").save(buf, format="PNG",
                                                                 compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def heatmap_rgba(uncertainty: np.ndarray, n_classes: int = 2, max_alpha: float = 0.55
                 ) -> np.ndarray:
    """Entropy map (nats) -> RGBA overlay: colour "inferno" and opacity both proportional
    to ``U / log(n_classes)`` (0 = certain, 1 = the most uncertain a C-class output can be)."""
    from matplotlib import colormaps

    u = np.clip(np.asarray(uncertainty, dtype=np.float64) / math.log(n_classes), 0.0, 1.0)
    rgba = colormaps["inferno"](u)
    rgba[..., 3] = max_alpha * u
    return np.round(rgba * 255).astype(np.uint8)


class LabelWidget(anywidget.AnyWidget):
    """Point-labelling widget of P1's region-based active learning (see module docstring)."""

    _esm = ESM
    _css = CSS

    image = t.Unicode("").tag(sync=True)
    heatmap = t.Unicode("").tag(sync=True)
    show_heatmap = t.Bool(True).tag(sync=True)
    zoom = t.Bool(False).tag(sync=True)
    shape = t.List(t.Int(), []).tag(sync=True)
    box = t.List(t.Int(), []).tag(sync=True)
    view = t.List(t.Int(), []).tag(sync=True)
    canvas_size = t.List(t.Int(), []).tag(sync=True)
    points = t.List(t.List(t.Int()), []).tag(sync=True)
    backgrounds = t.List(t.List(t.Int()), []).tag(sync=True)
    n_labels = t.Int(0).tag(sync=True)
    title = t.Unicode("").tag(sync=True)
    status = t.Unicode("").tag(sync=True)
    busy = t.Bool(False).tag(sync=True)
    progress = t.Float(0.0).tag(sync=True)
    last_click = t.List(t.Int(), []).tag(sync=True)
    name = t.Unicode("").tag(sync=True)

    def __init__(self, session: LabelSession, max_side: int = 480, zoom_margin: float = 0.5,
                 name: str = "", background: bool = True, **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.session = session
        self.background = background  # train in a thread (False: block until trained)
        self._draw_lock = threading.RLock()
        self.max_side = max_side
        self.zoom_margin = zoom_margin
        self._shown: tuple[Any, ...] | None = None
        self.on_msg(self._on_msg)
        self.observe(lambda _change: self.refresh(self.status), names="zoom")
        restored = session.restored
        self.refresh(f"restored {restored} labels from {session.store.path.name}"
                     if restored else f"labels are saved to {session.store.path.name}")

    # ------------------------------------------------------------------ drawing
    def summary(self) -> str:
        """``N labels (p points, b background) · S s of clicking · cycle c``."""
        kinds = [a.kind for a in self.session.annotations]
        cost = self.session.ledger().total
        n, p, b = len(kinds), kinds.count("point"), kinds.count("background")
        return (f"{n} label{'s' * (n != 1)} ({p} point{'s' * (p != 1)}, {b} background) · "
                f"{cost:.0f} s of clicking · cycle {self.session.cycle}")

    def refresh(self, message: str = "") -> None:
        """Push the session's current region, labels and images to the front end."""
        with self._draw_lock:
            self._refresh(message)

    def _refresh(self, message: str) -> None:
        cur = self.session.current()
        self.n_labels = len(self.session.store)
        status = self.summary() + (f" · {message}" if message else "")
        if cur is None:
            self.box, self.points, self.backgrounds = [], [], []
            self.title = "Every region of the pool is labelled."
            self.status = status
            return
        shape = tuple(int(s) for s in cur.image.shape)
        key = (cur.case_id, cur.z, self.session.cycle)
        with self.hold_sync():
            if key != self._shown:
                self.image = png_data_url(cur.image)
                self.heatmap = png_data_url(heatmap_rgba(cur.uncertainty))
                self._shown = key
            view = (zoom_view(cur.box, shape, self.zoom_margin) if self.zoom
                    else (0, shape[0], 0, shape[1]))
            self.shape = list(shape)
            self.view = list(view)
            self.canvas_size = list(canvas_size(view, self.max_side))
            self.box = list(cur.box)
            self.points = [[a.y, a.x] for a in cur.labels if a.kind == "point"]
            self.backgrounds = [list(a.box) for a in cur.labels if a.kind == "background"]
            y0, y1, x0, x1 = cur.box
            self.title = (f"case {cur.case_id}, slice {cur.z}: is there infection in rows "
                          f"{y0}-{y1 - 1}, columns {x0}-{x1 - 1}? "
                          f"({self.session.reduce} entropy {cur.score:.3f} nats)")
            self.status = status

    # ------------------------------------------------------------------- events
    def click_canvas(self, cx: float, cy: float, width: float, height: float) -> tuple[int, int]:
        """A click at canvas point ``(cx, cy)`` of a ``width x height`` canvas: the image
        pixel under it becomes a point label of the current region. Returns ``(y, x)``."""
        if len(self.view) != 4:
            raise ValueError("click: nothing is shown")
        y, x = canvas_to_image(cx, cy, width, height, tuple(self.view))
        self.session.click(y, x)
        self.last_click = [y, x]
        return y, x

    def handle_event(self, content: dict[str, Any]) -> str:
        """Apply one front-end event (click, background, undo, next, train, zoom), redraw, and
        return the message shown under the canvas. Bad input raises ``ValueError``."""
        message = self._apply(content)
        self.refresh(message)
        return message

    def _apply(self, content: dict[str, Any]) -> str:
        event = content.get("event") if isinstance(content, dict) else None
        if event == "click":
            try:
                args = [float(content[k]) for k in ("cx", "cy", "width", "height")]
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"click event {content!r}: needs numbers cx, cy, width, "
                                 "height") from exc
            y, x = self.click_canvas(*args)
            return f"point at row {y}, column {x} saved"
        if event == "background":
            ann = self.session.background()
            return f"region rows {ann.box[0]}-{ann.box[1] - 1} tagged background"
        if event == "undo":
            ann = self.session.undo()
            return "nothing to undo" if ann is None else f"removed the {ann.kind} label"
        if event == "next":
            self.session.next()
            return "skipped"
        if event == "zoom":
            self.zoom = not self.zoom
            return "zoomed on the region" if self.zoom else "whole slice"
        if event == "train" and self.background:
            return self.start_training()
        if event == "train":
            self.busy = True
            self.status = self.summary() + " · training…"
            try:
                res = self.session.train_cycle()
            finally:
                self.busy = False
            return (f"cycle {res.cycle}: trained on {res.labels} labels of {res.slices} "
                    f"slices in {res.train_seconds:.1f} s; new regions proposed")
        raise ValueError(f"unknown widget event {event!r}")

    def start_training(self) -> str:
        """Start a cycle in the background (buttons stay live, the bar shows progress)."""
        if self.session.training:
            return "a cycle is already training"

        def progress(f: float) -> None:
            self.progress = round(f, 3)

        def done(res: Any, error: BaseException | None) -> None:
            self.busy = False
            if error is not None:
                self.refresh(f"training failed: {type(error).__name__}: {error}")
            else:
                self.refresh(f"cycle {res.cycle}: trained on {res.labels} labels of "
                             f"{res.slices} slices in {res.train_seconds:.1f} s; new regions "
                             "proposed")

        self.progress = 0.0
        self.busy = True
        try:
            self.session.start_cycle(progress, done)
        except BaseException:
            self.busy = False
            raise
        return "training a cycle in the background; keep labelling"

    def _on_msg(self, _widget: Any, content: dict[str, Any], _buffers: Any) -> None:
        try:
            self.handle_event(content)
        except (ValueError, DataError) as exc:
            self.refresh(f"not saved: {exc}")
        except Exception as exc:
            self.busy = False
            self.refresh(f"error: {type(exc).__name__}: {exc}")
            raise
