// Loaded on pages with saved ipywidgets state, after RequireJS and before the ipywidgets html-manager
// (both vendored in _static/vendor/; the order is set by nb_ipywidgets_js in _config.yml).
(function () {
  "use strict";
  // 1. The html-manager's modules find their fonts next to their RequireJS module URL, which by default
  //    is relative to the page. Point the @jupyter-widgets modules at the vendored folder instead.
  var manager = new URL("vendor/html-manager", document.currentScript.src).href;
  window.require.config({ paths: { "@jupyter-widgets/html-manager/dist": manager, "@jupyter-widgets": manager } });
  window.__jupyter_widgets_assets_path__ = manager + "/";
  // 2. ipywidgets typesets widget labels with the MathJax 2 call MathJax.Hub.Queue(["Typeset", Hub, element]);
  //    the book runs MathJax 3 (deferred, so it exists by DOMContentLoaded; widgets render on "load").
  document.addEventListener("DOMContentLoaded", function () {
    var mathjax = window.MathJax;
    if (!mathjax || !mathjax.version || mathjax.Hub) return;
    mathjax.Hub = {
      Queue: function (job) {
        var element = job && job[2];
        if (!element || !mathjax.typesetPromise) return;
        var ready = mathjax.startup && mathjax.startup.promise ? mathjax.startup.promise : Promise.resolve();
        ready.then(function () { return mathjax.typesetPromise([element]); });
      },
    };
  });
})();
