"use strict";
(function () {
  // ----------------------------------------------------------- sortable tables
  function cellValue(row, col, type) {
    var v = row.cells[col].getAttribute("data-v");
    if (v === null || v === "") return null;
    return type === "num" ? parseFloat(v) : v.toLowerCase();
  }
  function sortTable(table, col, th) {
    var type = th.getAttribute("data-type");
    var asc = th.getAttribute("aria-sort") !== "ascending";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (r, i) { r._pos = i; });
    rows.sort(function (a, b) {
      var x = cellValue(a, col, type), y = cellValue(b, col, type);
      if (x === null || y === null) {  // missing values last either way
        return x === y ? a._pos - b._pos : (x === null ? 1 : -1);
      }
      var c = x < y ? -1 : x > y ? 1 : 0;
      return (asc ? c : -c) || a._pos - b._pos;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) {
      h.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", asc ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener("click", function () { sortTable(table, col, th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortTable(table, col, th); }
      });
    });
  });

  // ----------------------------------------------------------- confusion heatmap
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var wrap = document.getElementById("heat-wrap");
  if (!wrap || !data.names.length) return;
  var names = data.names, conf = data.confusion, n = names.length;
  var rowSum = conf.map(function (r) { return r.reduce(function (a, b) { return a + b; }, 0); });
  var canvas = document.getElementById("heat"), over = document.getElementById("heat-over");
  var tip = document.getElementById("heat-tip");
  var geo = null;

  function mix(a, b, t) {
    return "rgb(" + [0, 1, 2].map(function (i) { return Math.round(a[i] + (b[i] - a[i]) * t); })
      .join(",") + ")";
  }
  var DIAG0 = [238, 243, 251], DIAG1 = [31, 78, 156], OFF0 = [255, 255, 255], OFF1 = [215, 48, 31];

  function draw() {
    var width = wrap.clientWidth;
    var ctx = canvas.getContext("2d");
    // the label margin depends on the font, the font on the cell size: settle in two passes
    var margin = 120, cell = 2, font = 8, labels = false;
    for (var pass = 0; pass < 2; pass++) {
      cell = Math.max(2, Math.min(18, Math.floor((width - margin - 2) / n)));
      labels = cell >= 6;
      font = Math.min(12, cell + 1);
      ctx.font = font + "px system-ui, sans-serif";
      var longest = 0;
      if (labels) {
        names.forEach(function (s) { longest = Math.max(longest, ctx.measureText(s).width); });
      }
      margin = labels ? Math.min(170, Math.ceil(longest) + 10) : 28;
    }
    var size = margin + cell * n + 2;
    var dpr = window.devicePixelRatio || 1;
    [canvas, over].forEach(function (c) {
      c.width = Math.round(size * dpr); c.height = Math.round(size * dpr);
      c.style.width = size + "px"; c.style.height = size + "px";
    });
    wrap.style.height = size + "px";
    ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, size, size);
    for (var i = 0; i < n; i++) {
      var row = conf[i], total = rowSum[i];
      if (!total) {
        ctx.fillStyle = "#f4f5f7";
        ctx.fillRect(margin, margin + i * cell, n * cell, cell);
        continue;
      }
      for (var j = 0; j < n; j++) {
        var v = row[j];
        if (!v) continue;
        var s = v / total;
        ctx.fillStyle = i === j ? mix(DIAG0, DIAG1, s) : mix(OFF0, OFF1, Math.sqrt(s));
        ctx.fillRect(margin + j * cell, margin + i * cell, cell, cell);
      }
    }
    ctx.strokeStyle = "#c8ccd4"; ctx.lineWidth = 1;
    ctx.strokeRect(margin - 0.5, margin - 0.5, n * cell + 1, n * cell + 1);
    ctx.fillStyle = "#3a4150";
    ctx.font = font + "px system-ui, sans-serif";
    if (labels) {
      ctx.textBaseline = "middle"; ctx.textAlign = "right";
      names.forEach(function (s, i) {
        ctx.fillText(s, margin - 4, margin + (i + 0.5) * cell, margin - 8);
      });
      ctx.save(); ctx.rotate(-Math.PI / 2); ctx.textAlign = "left";
      names.forEach(function (s, j) {
        ctx.fillText(s, -(margin - 4), margin + (j + 0.5) * cell, margin - 8);
      });
      ctx.restore();
    } else {
      ctx.textBaseline = "middle"; ctx.textAlign = "center";
      ctx.fillText("prediction \u2192", margin + n * cell / 2, margin / 2);
      ctx.save(); ctx.translate(margin / 2, margin + n * cell / 2); ctx.rotate(-Math.PI / 2);
      ctx.fillText("ground truth \u2192", 0, 0); ctx.restore();
    }
    geo = {cell: cell, margin: margin, size: size, dpr: dpr};
    canvas.setAttribute("data-cell", cell);
    canvas.setAttribute("data-margin", margin);
    highlight(-1, -1);
  }

  function highlight(i, j) {
    var ctx = over.getContext("2d");
    ctx.setTransform(geo.dpr, 0, 0, geo.dpr, 0, 0);
    ctx.clearRect(0, 0, geo.size, geo.size);
    if (i < 0) return;
    var m = geo.margin, c = geo.cell;
    ctx.fillStyle = "rgba(40,60,100,0.10)";
    ctx.fillRect(m, m + i * c, n * c, c);
    ctx.fillRect(m + j * c, m, c, n * c);
    ctx.strokeStyle = "#111"; ctx.lineWidth = 1.5;
    ctx.strokeRect(m + j * c - 1, m + i * c - 1, c + 2, c + 2);
  }

  canvas.addEventListener("mousemove", function (e) {
    if (!geo) return;
    var r = canvas.getBoundingClientRect();
    var x = e.clientX - r.left, y = e.clientY - r.top;
    var j = Math.floor((x - geo.margin) / geo.cell), i = Math.floor((y - geo.margin) / geo.cell);
    if (i < 0 || j < 0 || i >= n || j >= n) { tip.hidden = true; highlight(-1, -1); return; }
    var v = conf[i][j], total = rowSum[i];
    var pct = !total ? "no " + names[i] + " pixels labeled"
      : (100 * v / total).toFixed(v && v / total < 0.001 ? 3 : 1) + "% of " + names[i] + " pixels";
    tip.textContent = names[i] + " \u2192 " + names[j] + ": " + v.toLocaleString("en-US") +
      " px, " + pct;
    tip.hidden = false;
    var left = x + 14, top = y + 14;
    if (left + tip.offsetWidth > wrap.clientWidth) left = x - tip.offsetWidth - 10;
    tip.style.left = left + "px"; tip.style.top = top + "px";
    highlight(i, j);
  });
  canvas.addEventListener("mouseleave", function () { tip.hidden = true; highlight(-1, -1); });
  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(draw, 120);
  });
  draw();
})();
