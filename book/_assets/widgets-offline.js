// Load Jupyter widget modules from this book's own _static/vendor folder, never from a CDN.
// Runs after RequireJS and before the widget manager (embed-amd.js): the manager first asks
// RequireJS for a module (the paths below), and would fall back to the folder named by
// data-jupyter-widgets-cdn, which is set here to a local folder too. The manager's fonts are
// found next to the URL RequireJS gives its module (and __jupyter_widgets_assets_path__).
(function () {
  "use strict";
  var script = document.currentScript;
  var vendor = script.src.replace(/[?#].*$/, "").replace(/[^/]*$/, "") + "vendor/";
  window.__jupyter_widgets_assets_path__ = vendor + "html-manager/";
  // html-manager, base, controls and output are defined inside embed-amd.js, but each takes
  // its webpack public path (where its icon fonts live) from the URL RequireJS gives its
  // module name: without these paths that is <page folder>/@jupyter-widgets/, which does not
  // exist (the fonts then 404 whenever that module's CSS is the one applied first).
  var manager = vendor + "html-manager/";
  window.requirejs.config({ paths: {
    "anywidget": vendor + "anywidget/index",
    "@jupyter-widgets/html-manager/dist": vendor + "html-manager",
    "@jupyter-widgets/html-manager": manager + "html-manager",
    "@jupyter-widgets/base": manager + "base",
    "@jupyter-widgets/controls": manager + "controls",
    "@jupyter-widgets/output": manager + "output"
  } });
  var marker = document.createElement("script");
  marker.type = "text/plain";
  marker.setAttribute("data-jupyter-widgets-cdn", vendor + "npm/");
  document.head.appendChild(marker);
})();
