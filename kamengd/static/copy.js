// Copy buttons for card keys (<button class="copy" data-copy="text">), shown
// only when this browser can copy. Loaded from our origin: the CSP allows no
// inline script. The page works without it (keys are plain, selectable text).
(function () {
  "use strict";

  function legacyCopy(text) {
    // No Clipboard API (plain http on a public address): copy through a
    // selection of an off-screen text area.
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "copy-buffer";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () { return legacyCopy(text); });
    }
    return legacyCopy(text);
  }

  function canCopy() {
    return (navigator.clipboard && window.isSecureContext) ||
      (document.queryCommandSupported && document.queryCommandSupported("copy"));
  }

  function announce(button, message) {
    var scope = button.closest("section, main") || document;
    var status = scope.querySelector(".copy-status");
    if (status) status.textContent = message;
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!canCopy()) return;
    document.querySelectorAll("button.copy[data-copy]").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () {
        copy(button.getAttribute("data-copy")).then(function () {
          document.querySelectorAll("button.copy.copied").forEach(function (b) { b.classList.remove("copied"); });
          button.classList.add("copied");
          announce(button, button.getAttribute("data-copied") || "Copied");
        }, function () {
          button.classList.add("copy-failed");
        });
      });
    });
  });
})();
