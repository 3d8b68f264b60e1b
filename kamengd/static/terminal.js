/* The verifier terminal: scan a voucher's QR code and check it (the page works without this).
   BarcodeDetector where the browser has one (Android's Chrome); elsewhere jsQR, vendored in
   jsqr.js and loaded only when a code is scanned. The camera needs HTTPS (or localhost); a
   photo taken with the phone's camera app works everywhere. */
(function () {
  "use strict";
  var form = document.getElementById("look-form");
  if (!form) { return; }
  var input = document.getElementById("code");
  var status = document.getElementById("scan-status");
  var cameraButton = document.getElementById("scan-camera");
  var photo = document.getElementById("scan-photo");
  var photoLabel = document.getElementById("scan-photo-label");
  var video = document.getElementById("scan-video");
  var jsqrLoading = null;
  var stream = null;

  var result = document.getElementById("voucher");
  if (result) { result.focus(); }
  photoLabel.hidden = false;
  if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.isSecureContext) {
    cameraButton.hidden = false;
  }

  function say(text) { status.textContent = text || ""; }

  function loadJsqr() {
    if (window.jsQR) { return Promise.resolve(window.jsQR); }
    if (!jsqrLoading) {
      jsqrLoading = new Promise(function (resolve, reject) {
        var s = document.createElement("script");
        s.src = cameraButton.getAttribute("data-jsqr");
        s.onload = function () { resolve(window.jsQR); };
        s.onerror = reject;
        document.head.appendChild(s);
      });
    }
    return jsqrLoading;
  }

  function nativeDetector() {
    if (!("BarcodeDetector" in window)) { return Promise.resolve(null); }
    return window.BarcodeDetector.getSupportedFormats().then(function (formats) {
      return formats.indexOf("qr_code") >= 0 ? new window.BarcodeDetector({formats: ["qr_code"]}) : null;
    }, function () { return null; });
  }

  // The text of a QR code in a drawable (image, video frame), or null.
  function decode(source, width, height) {
    return nativeDetector().then(function (detector) {
      if (detector) {
        return detector.detect(source).then(function (found) { return found.length ? found[0].rawValue : null; });
      }
      return loadJsqr().then(function (jsQR) {
        var scale = Math.min(1, 1280 / Math.max(width, height));
        var canvas = document.createElement("canvas");
        canvas.width = Math.max(1, Math.round(width * scale));
        canvas.height = Math.max(1, Math.round(height * scale));
        var ctx = canvas.getContext("2d", {willReadFrequently: true});
        ctx.drawImage(source, 0, 0, canvas.width, canvas.height);
        var pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
        var found = jsQR(pixels.data, pixels.width, pixels.height, {inversionAttempts: "attemptBoth"});
        return found ? found.data : null;
      });
    });
  }

  function found(text) {
    input.value = String(text).trim().slice(0, 80);
    stopCamera();
    form.requestSubmit ? form.requestSubmit() : form.submit();
  }

  // The picture read without a blob: address (the panel's CSP allows images from itself and data: only).
  function readPicture(file) {
    if (window.createImageBitmap) {
      return window.createImageBitmap(file).then(function (bitmap) {
        return {source: bitmap, width: bitmap.width, height: bitmap.height};
      });
    }
    return new Promise(function (resolve, reject) {
      var reader = new FileReader();
      reader.onload = function () {
        var img = new Image();
        img.onload = function () { resolve({source: img, width: img.naturalWidth, height: img.naturalHeight}); };
        img.onerror = reject;
        img.src = reader.result;
      };
      reader.onerror = reject;
      reader.readAsDataURL(file);
    });
  }

  photo.addEventListener("change", function () {
    var file = photo.files && photo.files[0];
    if (!file) { return; }
    say("");
    readPicture(file).then(function (pic) {
      return decode(pic.source, pic.width, pic.height);
    }).then(function (text) {
      if (text) { found(text); } else { say(status.getAttribute("data-nothing")); }
    }, function () { say(status.getAttribute("data-nothing")); });
  });

  function stopCamera() {
    if (stream) { stream.getTracks().forEach(function (t) { t.stop(); }); stream = null; }
    video.hidden = true;
  }

  function scanFrames() {
    if (!stream) { return; }
    if (video.readyState < 2) { setTimeout(scanFrames, 150); return; }
    decode(video, video.videoWidth, video.videoHeight).then(function (text) {
      if (text) { found(text); } else { setTimeout(scanFrames, 200); }
    }, function () { setTimeout(scanFrames, 400); });
  }

  cameraButton.addEventListener("click", function () {
    if (stream) { stopCamera(); return; }
    navigator.mediaDevices.getUserMedia({video: {facingMode: "environment"}, audio: false}).then(function (s) {
      stream = s;
      video.srcObject = s;
      video.hidden = false;
      video.play();
      say("");
      scanFrames();
    }, function () { say(status.getAttribute("data-denied")); });
  });
}());
