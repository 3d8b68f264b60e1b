// The order page watches an order that may still change by itself (unpaid, or
// paid and being delivered): it asks /order/<no>/status every few seconds and
// reloads the page when the status moves, so the keys appear without a tap.
// Loaded from our origin (the CSP allows no inline script); without it the
// page refreshes itself (<noscript> meta refresh) or the buyer reloads.
(function () {
  "use strict";
  var EVERY_MS = 2500, GIVE_UP_MS = 30 * 60 * 1000;

  document.addEventListener("DOMContentLoaded", function () {
    var watch = document.getElementById("watch");
    if (!watch || !window.fetch) return;
    var url = watch.getAttribute("data-status-url"), status = watch.getAttribute("data-status");
    var started = Date.now(), delay = EVERY_MS;

    function again() {
      if (Date.now() - started < GIVE_UP_MS) window.setTimeout(ask, delay);
    }

    function ask() {
      if (document.hidden) { again(); return; }   // a tab in the background waits its turn
      fetch(url, {credentials: "same-origin", cache: "no-store", headers: {"Accept": "application/json"}})
        .then(function (response) { return response.ok ? response.json() : null; })
        .then(function (data) {
          if (data && data.status && data.status !== status) {
            window.location.reload();
            return;
          }
          // Quick while a payment is usually confirmed; then every 15 s (a manual
          // delivery can take hours: no need to ask every few seconds).
          delay = Date.now() - started > 2 * 60 * 1000 ? 15000 : EVERY_MS;
          again();
        }, function () {
          delay = Math.min(delay * 2, 30000);   // offline or the shop busy: back off
          again();
        });
    }
    again();
  });
})();

// A countdown to the payment deadline (the time itself is shown without JavaScript).
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var el = document.querySelector("[data-seconds-left]");
    if (!el) return;
    var end = Date.now() + 1000 * parseInt(el.getAttribute("data-seconds-left"), 10), shown = el.textContent;
    function tick() {
      var left = Math.max(0, Math.round((end - Date.now()) / 1000));
      var m = Math.floor(left / 60), s = left % 60;
      el.textContent = shown + " (" + m + ":" + (s < 10 ? "0" : "") + s + ")";
      if (left > 0) window.setTimeout(tick, 1000);
    }
    tick();
  });
})();
