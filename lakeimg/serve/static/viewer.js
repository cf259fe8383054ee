// lakeimg deep-zoom viewer: a canvas that draws tiles of the pyramid level matching the zoom.
// Tiles come from the catalog's DZI-like URLs (/zoom/{table}/{version}/{level}/{col}_{row}.png,
// level 0 = full resolution); the descriptor (data-descriptor) gives size, tile size, levels
// and, for 16-bit and float images, the default display window. No dependencies, no CDN.
(function () {
  "use strict";
  var root = document.getElementById("viewer");
  if (!root) { return; }
  var canvas = document.getElementById("viewer-canvas");
  var ctx = canvas.getContext("2d");
  var statusEl = document.getElementById("viewer-status");
  var info = null;
  var scale = 1;          // screen pixels per level-0 pixel
  var vx = 0, vy = 0;     // level-0 coordinates of the canvas' top-left corner
  var windowParam = null; // [low, high] for 16-bit and float images
  var tiles = new Map();  // url -> {img, ok, failed}
  var ready = false;
  var errors = 0;

  function status(text) { if (statusEl) { statusEl.textContent = text; } }

  function levelShape(level) {
    var h = info.height, w = info.width;
    for (var i = 0; i < level; i++) { h = Math.max(1, Math.floor((h + 1) / 2)); w = Math.max(1, Math.floor((w + 1) / 2)); }
    return [h, w];
  }

  function levelFor(s) {
    var l = Math.floor(Math.log2(1 / s) + 1e-9);
    return Math.max(0, Math.min(info.levels - 1, l));
  }

  function tileUrl(level, col, row) {
    var url = info.tile_url.replace("{level}", level).replace("{col}", col).replace("{row}", row);
    if (windowParam) { url += "&window=" + encodeURIComponent(windowParam[0] + "," + windowParam[1]); }
    return url;
  }

  function tile(url) {
    var t = tiles.get(url);
    if (t) { return t; }
    t = {img: new Image(), ok: false, failed: false};
    t.img.onload = function () { t.ok = true; schedule(); };
    t.img.onerror = function () { t.failed = true; errors += 1; status("a tile failed to load"); schedule(); };
    t.img.src = url;
    tiles.set(url, t);
    if (tiles.size > 600) { tiles.delete(tiles.keys().next().value); }
    return t;
  }

  var pending = false;
  function schedule() {
    if (pending) { return; }
    pending = true;
    requestAnimationFrame(function () { pending = false; draw(); });
  }

  function draw() {
    if (!info) { return; }
    var cw = canvas.width, ch = canvas.height;
    var level = levelFor(scale);
    var f = Math.pow(2, level), ts = info.tile_size, shape = levelShape(level);
    ctx.imageSmoothingEnabled = scale < 1;
    ctx.fillStyle = "#222";
    ctx.fillRect(0, 0, cw, ch);
    var x0 = Math.max(0, vx / f), y0 = Math.max(0, vy / f);
    var x1 = Math.min(shape[1], (vx + cw / scale) / f), y1 = Math.min(shape[0], (vy + ch / scale) / f);
    var needed = 0, drawn = 0;
    for (var row = Math.floor(y0 / ts); row * ts < y1; row++) {
      for (var col = Math.floor(x0 / ts); col * ts < x1; col++) {
        needed += 1;
        var t = tile(tileUrl(level, col, row));
        if (!t.ok) { continue; }
        var dx = (col * ts * f - vx) * scale, dy = (row * ts * f - vy) * scale;
        var dw = t.img.naturalWidth * f * scale, dh = t.img.naturalHeight * f * scale;
        if (scale * f === 1) {
          ctx.drawImage(t.img, Math.round(dx), Math.round(dy));  // one tile pixel per canvas pixel: exact
        } else {
          ctx.drawImage(t.img, dx, dy, dw, dh);
        }
        drawn += 1;
      }
    }
    ready = needed === drawn;
    canvas.dataset.level = String(level);
    canvas.dataset.ready = ready ? "1" : "0";
    status("level " + level + " · zoom " + (scale >= 1 ? scale.toFixed(2) : "1/" + (1 / scale).toFixed(1)) +
           " · " + Math.round(vx) + "," + Math.round(vy) + (ready ? "" : " · loading"));
  }

  function fit() {
    scale = Math.min(canvas.width / info.width, canvas.height / info.height, 1);
    vx = -(canvas.width / scale - info.width) / 2;
    vy = -(canvas.height / scale - info.height) / 2;
    draw();
  }

  function zoomAt(factor, sx, sy) {
    var px = vx + sx / scale, py = vy + sy / scale;
    scale = Math.max(1 / Math.pow(2, info.levels + 1), Math.min(16, scale * factor));
    vx = px - sx / scale;
    vy = py - sy / scale;
    draw();
  }

  canvas.addEventListener("wheel", function (e) {
    e.preventDefault();
    var r = canvas.getBoundingClientRect();
    zoomAt(e.deltaY < 0 ? 1.25 : 0.8, e.clientX - r.left, e.clientY - r.top);
  }, {passive: false});
  var drag = null;
  canvas.addEventListener("pointerdown", function (e) { drag = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointermove", function (e) {
    if (!drag) { return; }
    vx -= (e.clientX - drag[0]) / scale;
    vy -= (e.clientY - drag[1]) / scale;
    drag = [e.clientX, e.clientY];
    draw();
  });
  canvas.addEventListener("pointerup", function () { drag = null; });
  root.querySelectorAll("button[data-zoom]").forEach(function (b) {
    b.addEventListener("click", function () {
      var how = b.getAttribute("data-zoom");
      if (how === "fit") { fit(); } else { zoomAt(how === "in" ? 2 : 0.5, canvas.width / 2, canvas.height / 2); }
    });
  });
  var apply = document.getElementById("window-apply");
  if (apply) {
    apply.addEventListener("click", function () {
      var lo = parseFloat(document.getElementById("window-lo").value);
      var hi = parseFloat(document.getElementById("window-hi").value);
      if (isFinite(lo) && isFinite(hi) && hi > lo) { windowParam = [lo, hi]; draw(); } else { status("window: low must be below high"); }
    });
  }

  // For people and for tests: jump to a level and a level-0 position, ask whether every
  // visible tile is drawn, read the descriptor.
  window.lakeimgViewer = {
    goTo: function (level, x, y) { scale = 1 / Math.pow(2, level); vx = x; vy = y; draw(); },
    setWindow: function (lo, hi) { windowParam = [lo, hi]; draw(); },
    ready: function () { return ready; },
    errors: function () { return errors; },
    info: function () { return info; }
  };

  fetch(root.getAttribute("data-descriptor"), {credentials: "same-origin"})
    .then(function (r) { return r.json(); })
    .then(function (d) {
      if (d.error_class) { status(d.error_class + ": " + d.error_message); return; }
      info = d;
      if (d.window) { windowParam = d.window; }
      root.dataset.loaded = "1";
      fit();
    })
    .catch(function (e) { status("descriptor: " + e); });
})();
