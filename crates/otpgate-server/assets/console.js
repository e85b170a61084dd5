// otpgate console: the little behaviour that is not htmx's. Served as a
// file because the Content-Security-Policy allows no inline script.
(function () {
  "use strict";

  // Copy buttons are hidden until this script runs: without it the text is
  // still there to select by hand.
  function showCopyButtons(root) {
    root.querySelectorAll("button[data-copy]").forEach(function (b) {
      b.hidden = false;
    });
  }

  function selectText(el) {
    var range = document.createRange();
    range.selectNodeContents(el);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  function flash(button, text) {
    var before = button.dataset.label || button.textContent;
    button.dataset.label = before;
    button.textContent = text;
    window.setTimeout(function () {
      button.textContent = before;
    }, 1500);
  }

  document.addEventListener("click", function (e) {
    var button = e.target.closest("button[data-copy]");
    if (!button) return;
    var el = document.getElementById(button.dataset.copy);
    if (!el) return;
    var text = el.textContent;
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { flash(button, "Copied"); },
        function () { selectText(el); flash(button, "Selected"); }
      );
    } else {
      // Plain http on a remote host has no clipboard API: select the text
      // so one keystroke copies it.
      selectText(el);
      flash(button, "Selected");
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    showCopyButtons(document);
  });
  document.addEventListener("htmx:afterSwap", function (e) {
    showCopyButtons(e.target);
  });
})();
