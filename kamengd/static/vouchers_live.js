/* The redemptions page's figure for today, kept current (the rest of the page is a plain report). */
(function () {
  "use strict";
  var box = document.getElementById("today");
  if (!box || !window.fetch) { return; }
  function cell(text) { var td = document.createElement("td"); td.textContent = text; return td; }
  function refresh() {
    fetch(box.getAttribute("data-url"), {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (today) {
        if (!today) { return; }
        document.getElementById("today-redeemed").textContent = today.redeemed;
        document.getElementById("today-refused").textContent = today.refused;
        var body = document.querySelector("#today-stores tbody");
        body.textContent = "";
        today.stores.forEach(function (s) {
          var tr = document.createElement("tr");
          tr.appendChild(cell(s.store)); tr.appendChild(cell(s.redeemed)); tr.appendChild(cell(s.refused));
          body.appendChild(tr);
        });
      }, function () {});
  }
  setInterval(refresh, 10000);
}());
