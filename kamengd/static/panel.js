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

  // Drafts: what a staff member types into a panel form is kept in this tab
  // (sessionStorage) until the form is sent. When the server refuses the form
  // because the session ended, it sends them back (after signing in) with
  // ?restore=1 and the draft is filled in again: no edit is lost. Secrets
  // (passwords, merchant keys, card keys, codes) are never kept.
  var SECRET = /^(csrf_token|password|new_password|current_password|key|keys|code|secret|query_password)$/;
  var DRAFT_MS = 2 * 60 * 60 * 1000;

  function draftKey(form) {
    return "kamengd-draft:" + window.location.pathname + ":" + (form.getAttribute("action") || "");
  }

  function keptFields(form) {
    var data = {};
    Array.prototype.forEach.call(form.elements, function (el) {
      if (!el.name || SECRET.test(el.name) || el.hasAttribute("data-no-draft")) return;
      if (["password", "hidden", "file", "submit", "button"].indexOf(el.type) >= 0) return;
      if (el.type === "checkbox" || el.type === "radio") {
        if (el.checked) data[el.name + "=" + el.value] = true;
      } else {
        data[el.name] = el.value;
      }
    });
    return data;
  }

  function store(form) {
    try {
      window.sessionStorage.setItem(draftKey(form), JSON.stringify({at: Date.now(), fields: keptFields(form)}));
    } catch (e) { /* storage full or off: the form still works */ }
  }

  document.addEventListener("input", function (event) {
    var form = event.target.form;
    if (form && (form.method || "").toLowerCase() === "post") store(form);
  });

  document.addEventListener("DOMContentLoaded", function () {
    if (!window.sessionStorage) return;
    var restore = /[?&]restore=1(&|$)/.test(window.location.search);
    Array.prototype.forEach.call(document.querySelectorAll("form[method=post]"), function (form) {
      var raw = window.sessionStorage.getItem(draftKey(form));
      if (!raw) return;
      var draft;
      try { draft = JSON.parse(raw); } catch (e) { draft = null; }
      if (!restore || !draft || Date.now() - draft.at > DRAFT_MS) {
        // A draft not asked for is one whose form was sent (or left): forget it.
        window.sessionStorage.removeItem(draftKey(form));
        return;
      }
      Array.prototype.forEach.call(form.elements, function (el) {
        if (!el.name || SECRET.test(el.name)) return;
        if (el.type === "checkbox" || el.type === "radio") {
          el.checked = !!draft.fields[el.name + "=" + el.value];
        } else if (Object.prototype.hasOwnProperty.call(draft.fields, el.name) && el.type !== "password" &&
                   el.type !== "hidden" && el.type !== "file") {
          el.value = draft.fields[el.name];
        }
      });
      form.classList.add("restored");
    });
  });

  // <select data-show-by>: in its form, only the [data-shown-for="a b …"] parts listing the
  // chosen value show (a risk rule's parameters for its kind). Without this script every part
  // shows, each saying what it is for. (After the drafts: a restored choice counts.)
  function showChosen(select) {
    Array.prototype.forEach.call(select.form.querySelectorAll("[data-shown-for]"), function (el) {
      el.hidden = el.getAttribute("data-shown-for").split(" ").indexOf(select.value) < 0;
    });
  }

  document.addEventListener("change", function (event) {
    if (event.target.matches && event.target.matches("select[data-show-by]")) showChosen(event.target);
  });

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("select[data-show-by]"), showChosen);
  });
})();
