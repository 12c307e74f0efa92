"""Browser side of :class:`covidlib.widgets.view.LabelWidget` (anywidget ESM and CSS).

Kept as Python strings so the widget works from any install (no package-data files). The
front end only draws what the Python model holds (image, heat-map, view window, region,
labels) and reports raw canvas clicks: ``{"event": "click", "cx", "cy", "width",
"height"}`` in CSS pixels with the canvas' displayed size; Python turns them into image
pixels (:func:`covidlib.widgets.geometry.canvas_to_image`). The heat-map toggle works
without a kernel too (static pages of the book). ``data-lm-suppress-shortcuts`` keeps
JupyterLab's own shortcuts (b, z, ...) away while the widget has the keyboard focus.
While a training cycle runs in the kernel's background thread (``busy``), only "Train a
cycle" is disabled: clicks and the other buttons stay live, and a progress bar shows
``progress`` (0..1).
"""

ESM = r"""
const KEYS = { b: "background", u: "undo", Backspace: "undo", n: "next", t: "train",
               h: "heatmap", z: "zoom" };
const BUTTONS = [
  ["background", "Background", "b", "This region holds no infection"],
  ["undo", "Undo", "u", "Remove the last label"],
  ["next", "Next", "n", "Skip this region"],
  ["train", "Train a cycle", "t", "Retrain on every label and propose new regions"],
  ["heatmap", "Heat-map", "h", "Show the model's uncertainty (MC-dropout entropy)"],
  ["zoom", "Zoom", "z", "Zoom on the region"],
];

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "covidlib-label";
  root.tabIndex = 0;
  root.setAttribute("data-lm-suppress-shortcuts", "true");
  root.dataset.name = model.get("name");
  const title = document.createElement("div");
  title.className = "covidlib-label-title";
  const canvas = document.createElement("canvas");
  canvas.className = "covidlib-label-canvas";
  const bar = document.createElement("div");
  bar.className = "covidlib-label-bar";
  const status = document.createElement("div");
  status.className = "covidlib-label-status";
  const meter = document.createElement("progress");
  meter.className = "covidlib-label-progress";
  meter.max = 1;
  const buttons = {};
  for (const [action, text, key, help] of BUTTONS) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = `${text} [${key}]`;
    b.title = help;
    b.dataset.action = action;
    b.addEventListener("click", () => act(action));
    buttons[action] = b;
    bar.append(b);
  }
  root.append(title, canvas, bar, meter, status);
  el.append(root);

  const img = new Image();
  const heat = new Image();
  img.onload = draw;
  heat.onload = draw;

  function loadImages() {
    if (model.get("image")) img.src = model.get("image");
    if (model.get("heatmap")) heat.src = model.get("heatmap");
  }

  function syncControls() {
    const busy = model.get("busy");
    for (const [action, b] of Object.entries(buttons)) {
      b.disabled = busy && action === "train";
    }
    buttons.heatmap.setAttribute("aria-pressed", String(model.get("show_heatmap")));
    buttons.zoom.setAttribute("aria-pressed", String(model.get("zoom")));
    title.textContent = model.get("title");
    status.textContent = model.get("status");
    root.classList.toggle("covidlib-busy", busy);
    meter.hidden = !busy;
    meter.value = model.get("progress");
  }

  function draw() {
    const view = model.get("view");
    const size = model.get("canvas_size");
    if (!view || view.length !== 4 || !size || size.length !== 2) return;
    const [vy0, vy1, vx0, vx1] = view;
    const [cw, ch] = size;
    if (canvas.width !== cw) canvas.width = cw;
    if (canvas.height !== ch) canvas.height = ch;
    canvas.style.width = `${cw}px`;
    canvas.dataset.view = JSON.stringify(view);
    canvas.dataset.shape = JSON.stringify(model.get("shape"));
    canvas.dataset.box = JSON.stringify(model.get("box"));
    canvas.dataset.labels = String(model.get("n_labels"));
    const ctx = canvas.getContext("2d");
    const sx = cw / (vx1 - vx0);
    const sy = ch / (vy1 - vy0);
    ctx.imageSmoothingEnabled = !model.get("zoom");
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, cw, ch);
    if (img.complete && img.naturalWidth) {
      ctx.drawImage(img, vx0, vy0, vx1 - vx0, vy1 - vy0, 0, 0, cw, ch);
    }
    if (model.get("show_heatmap") && heat.complete && heat.naturalWidth) {
      ctx.drawImage(heat, vx0, vy0, vx1 - vx0, vy1 - vy0, 0, 0, cw, ch);
    }
    const rect = ([y0, y1, x0, x1]) => [(x0 - vx0) * sx, (y0 - vy0) * sy,
                                         (x1 - x0) * sx, (y1 - y0) * sy];
    for (const b of model.get("backgrounds")) {
      ctx.fillStyle = "rgba(0, 190, 255, 0.22)";
      ctx.fillRect(...rect(b));
      ctx.strokeStyle = "rgba(0, 190, 255, 0.9)";
      ctx.lineWidth = 1;
      ctx.strokeRect(...rect(b));
    }
    const box = model.get("box");
    if (box && box.length === 4) {
      ctx.strokeStyle = "#ff3b30";
      ctx.lineWidth = 2;
      ctx.strokeRect(...rect(box));
    }
    const arm = Math.max(4, Math.min(9, sx * 2));
    for (const [y, x] of model.get("points")) {
      const px = (x + 0.5 - vx0) * sx;
      const py = (y + 0.5 - vy0) * sy;
      for (const [colour, width] of [["#000", 4], ["#ffe600", 2]]) {
        ctx.strokeStyle = colour;
        ctx.lineWidth = width;
        ctx.beginPath();
        ctx.moveTo(px - arm, py); ctx.lineTo(px + arm, py);
        ctx.moveTo(px, py - arm); ctx.lineTo(px, py + arm);
        ctx.stroke();
      }
    }
  }

  function act(action) {
    if (action === "heatmap") {
      model.set("show_heatmap", !model.get("show_heatmap"));
      model.save_changes();
      return;
    }
    if (model.get("busy") && action === "train") return;
    model.send({ event: action });
  }

  canvas.addEventListener("click", (ev) => {
    const r = canvas.getBoundingClientRect();
    model.send({ event: "click", cx: ev.clientX - r.left, cy: ev.clientY - r.top,
                 width: r.width, height: r.height });
    root.focus({ preventScroll: true });
  });
  root.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const action = KEYS[ev.key];
    if (!action) return;
    ev.preventDefault();
    ev.stopPropagation();
    act(action);
  });

  const redraw = () => { syncControls(); draw(); };
  model.on("change:image", loadImages);
  model.on("change:heatmap", loadImages);
  for (const name of ["view", "canvas_size", "box", "points", "backgrounds", "show_heatmap",
                      "zoom", "busy", "progress", "status", "title", "n_labels"]) {
    model.on(`change:${name}`, redraw);
  }
  loadImages();
  redraw();
  return () => root.remove();
}

export default { render };
"""

CSS = r"""
.covidlib-label { display: inline-block; outline: none; padding: 6px; border-radius: 6px;
  font: 13px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
  background: #fff; }
.covidlib-label:focus, .covidlib-label:focus-within { box-shadow: 0 0 0 2px #4c8bf5; }
.covidlib-label-title { font-weight: 600; margin-bottom: 4px; }
.covidlib-label-canvas { display: block; max-width: 100%; height: auto; cursor: crosshair;
  image-rendering: auto; }
.covidlib-label-bar { display: flex; flex-wrap: wrap; gap: 4px; margin-top: 6px; }
.covidlib-label-bar button { padding: 3px 10px; border: 1px solid #999; border-radius: 4px;
  background: #f5f5f5; color: #222; cursor: pointer; font: inherit; }
.covidlib-label-bar button:hover:enabled { background: #e8e8e8; }
.covidlib-label-bar button[aria-pressed="true"] { background: #ffd98a; border-color: #c8961e; }
.covidlib-label-bar button:disabled { opacity: 0.5; cursor: progress; }
.covidlib-label-status { margin-top: 6px; color: #444; min-height: 1.4em; }
.covidlib-label-progress { display: block; width: 100%; height: 8px; margin-top: 6px; }
.covidlib-label-progress[hidden] { display: none; }
"""
