// receiver console: the only script. Reading works without it; it reloads pages that show
// something still moving (body[data-refresh]) unless the person is typing in a form.
(function () {
  "use strict";
  var seconds = Number(document.body.getAttribute("data-refresh"));
  if (!seconds || seconds < 1) { return; }
  window.setTimeout(function tick() {
    var active = document.activeElement;
    if (active && (active.tagName === "INPUT" || active.tagName === "TEXTAREA" || active.tagName === "SELECT")) {
      window.setTimeout(tick, seconds * 1000);
      return;
    }
    window.location.reload();
  }, seconds * 1000);
})();
