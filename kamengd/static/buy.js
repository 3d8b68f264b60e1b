// The product page's total (合计) follows the quantity as the buyer types. Money
// is whole cents here too: no float ever reaches the display. Loaded from our
// origin (the CSP allows no inline script); without it the server-rendered
// total is for the quantity shown, and the gateway's page shows the amount.
(function () {
  "use strict";

  function format(cents) {
    var whole = Math.floor(cents / 100), part = String(cents % 100);
    return whole + "." + (part.length < 2 ? "0" + part : part);
  }

  document.addEventListener("DOMContentLoaded", function () {
    var form = document.querySelector("form.buy[data-price-cents]");
    if (!form) return;
    var price = parseInt(form.getAttribute("data-price-cents"), 10);
    // Wholesale tiers, [[least quantity, unit cents], …]: the lowest unit that applies.
    var tiers = [];
    try { tiers = JSON.parse(form.getAttribute("data-tiers") || "[]"); } catch (e) { tiers = []; }
    function unit(n) {
      var best = price;
      for (var i = 0; i < tiers.length; i++) {
        if (n >= tiers[i][0] && tiers[i][1] < best) best = tiers[i][1];
      }
      return best;
    }
    var quantity = document.getElementById("quantity"), total = document.getElementById("total");
    if (!quantity || !total || !(price >= 0)) return;
    function update() {
      var n = parseInt(quantity.value, 10);
      var low = parseInt(quantity.min, 10) || 1, high = parseInt(quantity.max, 10) || n;
      total.value = (n >= low && n <= high && String(n) === quantity.value.trim()) ? format(unit(n) * n) : "—";
    }
    quantity.addEventListener("input", update);
    update();
  });
})();
