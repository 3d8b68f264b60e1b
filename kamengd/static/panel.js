// The panel works without this file; it adds confirmations, copy buttons and
// an upload progress bar. Loaded from our origin only (CSP: no inline script).
(function () {
  "use strict";

  // <button data-confirm="Sure?">: ask before the form is sent.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-confirm]");
    if (button && !window.confirm(button.getAttribute("data-confirm"))) {
      event.preventDefault();
    }
  });

  // <button class="copy" data-copy="#id">: copy that element's text.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button.copy");
    if (!button || !navigator.clipboard) return;
    var target = document.querySelector(button.getAttribute("data-copy"));
    if (!target) return;
    navigator.clipboard.writeText(target.innerText.trim()).then(function () {
      button.classList.add("copied");
    });
  });

  // <form data-upload-progress="#progress-id">: send with XMLHttpRequest to
  // show upload progress, then show the page the server answers with.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var selector = form.getAttribute("data-upload-progress");
    if (!selector || !window.XMLHttpRequest || !window.FormData) return;
    var box = document.querySelector(selector);
    if (!box) return;
    event.preventDefault();
    var bar = box.querySelector("progress");
    var text = box.querySelector("[data-progress-text]");
    var submit = form.querySelector("[type=submit]");
    box.hidden = false;
    if (submit) submit.disabled = true;
    var xhr = new XMLHttpRequest();
    xhr.open(form.method || "POST", form.action);
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      var pct = Math.round(e.loaded * 100 / e.total);
      bar.value = pct;
      if (text) text.textContent = pct + "% (" + Math.round(e.loaded / 1024) + " / " + Math.round(e.total / 1024) + " KiB)";
    });
    xhr.upload.addEventListener("load", function () {
      bar.removeAttribute("value");   // indeterminate while the server imports
      if (text) text.textContent = text.getAttribute("data-processing") || "…";
    });
    xhr.addEventListener("load", function () {
      document.open();
      document.write(xhr.responseText);
      document.close();
      if (xhr.responseURL) window.history.replaceState(null, "", xhr.responseURL);
    });
    xhr.addEventListener("error", function () {
      if (submit) submit.disabled = false;
      if (text) text.textContent = text.getAttribute("data-failed") || "upload failed";
    });
    xhr.send(new FormData(form));
  });
})();
