"""The report page's inline stylesheet and its chart renderer (plain JS drawing SVG).

The renderer reads the JSON embedded in ``<script id="report-data">`` and draws into
every ``div.chart`` by its ``data-chart`` kind: ``sqnr``, ``acc``, ``cycles`` and
``hist`` (with ``data-index`` into ``activations``). Each drawn container gets
``data-drawn="true"`` and ``data-marks`` (the number of data marks drawn, elements with
class ``mark``); ``body`` gets ``data-charts-drawn`` (the number of charts drawn).
"""

CSS = """
:root { --fg:#1d2330; --muted:#5b6475; --line:#d6dbe4; --bg:#f6f7fa; --card:#fff;
  --conv:#3465a4; --add:#8f5bb5; --other:#6c8a3c; --bad:#c0392b; --ok:#2e8b57;
  --warn:#d98c00; --bound:#e67e22; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--fg); background: var(--bg); }
header { padding: 18px 28px 8px; background: #1d2330; color: #fff; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0 0 10px; color: #c5cbd6; }
main { padding: 8px 28px 40px; max-width: 1400px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: 14px 18px; margin: 16px 0; }
h2 { font-size: 17px; margin: 0 0 8px; }
p.help { color: var(--muted); margin: 0 0 10px; max-width: 100ch; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px;
  min-width: 170px; background: #fbfcfe; }
.card .k { color: var(--muted); font-size: 12px; text-transform: uppercase; }
.card .v { font-size: 20px; font-weight: 600; }
.ok { color: var(--ok); } .bad { color: var(--bad); } .warn { color: var(--warn); }
table { border-collapse: collapse; width: 100%; font-size: 12.5px; margin-top: 8px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 8px; text-align: left;
  vertical-align: top; }
th { background: #eef1f6; position: sticky; top: 0; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.name { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: 12px;
  word-break: break-all; }
details > summary { cursor: pointer; color: var(--muted); margin-top: 6px; }
.table-wrap { max-height: 420px; overflow: auto; }
.chart { overflow-x: auto; min-height: 40px; }
.chart svg { display: block; }
.chart text { font-size: 10.5px; fill: var(--muted); }
.chart .title { font-size: 12px; fill: var(--fg); }
.chart .axis { stroke: #9aa3b2; stroke-width: 1; }
.chart .grid { stroke: #e7eaf0; stroke-width: 1; }
.chart .limit { stroke: var(--bad); stroke-width: 1.5; stroke-dasharray: 5 3; }
.chart .cliplim { stroke: var(--bad); stroke-width: 1.5; }
.chart .outside { fill: var(--bad); opacity: 0.08; }
.chart .bar-conv { fill: var(--conv); } .chart .bar-add { fill: var(--add); }
.chart .bar-other { fill: var(--other); } .chart .bar-ideal { fill: #9bb7dd; }
.chart .bar-hist { fill: var(--conv); }
.chart .bar-inf { fill: var(--ok); }
.chart .bound { fill: var(--bound); stroke: #fff; stroke-width: 0.5; }
.chart .bound-obs { fill: #fff; stroke: var(--bound); stroke-width: 1.5; }
.legend { font-size: 12px; color: var(--muted); margin: 4px 0; }
.legend span { display: inline-block; width: 10px; height: 10px; margin: 0 4px 0 12px;
  vertical-align: -1px; border-radius: 2px; }
.hist-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr));
  gap: 10px; }
.hist-grid figure { margin: 0; border: 1px solid var(--line); border-radius: 4px;
  padding: 6px; }
.hist-grid figcaption { font-family: ui-monospace, Menlo, monospace; font-size: 11px;
  word-break: break-all; }
.hist-grid figcaption b { font-family: system-ui, sans-serif; }
"""

JS = r"""
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var drawn = 0;

  function num(v) {
    if (v === "inf") return Infinity;
    if (v === "-inf") return -Infinity;
    return v === null || v === undefined ? NaN : Number(v);
  }
  function el(tag, attrs, parent) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function label(parent, x, y, str, cls, anchor, rotate) {
    var t = el("text", { x: x, y: y, "class": cls || "", "text-anchor": anchor || "start" },
      parent);
    if (rotate) t.setAttribute("transform", "rotate(" + rotate + " " + x + " " + y + ")");
    t.textContent = str;
    return t;
  }
  function tip(node, str) { el("title", {}, node).textContent = str; }
  function fmt(v, digits) {
    if (!isFinite(v)) return v > 0 ? "inf" : (v < 0 ? "-inf" : "-");
    var a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
    return v.toFixed(digits === undefined ? 2 : digits);
  }
  function opClass(op) {
    if (op.indexOf("Conv") >= 0 || op.indexOf("MatMul") >= 0 || op === "QGemm") return "bar-conv";
    if (op.indexOf("Add") >= 0 || op.indexOf("Mul") >= 0) return "bar-add";
    return "bar-other";
  }
  function svgFor(width, height) {
    return el("svg", { width: width, height: height, viewBox: "0 0 " + width + " " + height,
      role: "img" });
  }
  function finish(box, svg) {
    box.appendChild(svg);
    var marks = svg.querySelectorAll(".mark").length;
    box.setAttribute("data-marks", String(marks));
    box.setAttribute("data-drawn", "true");
    drawn += 1;
  }
  function yAxis(svg, x0, x1, y, lo, hi, ticks, fmtTick) {
    for (var i = 0; i < ticks.length; i++) {
      var yy = y(ticks[i]);
      el("line", { x1: x0, x2: x1, y1: yy, y2: yy, "class": "grid" }, svg);
      label(svg, x0 - 4, yy + 3, fmtTick(ticks[i]), "", "end");
    }
    el("line", { x1: x0, x2: x0, y1: y(lo), y2: y(hi), "class": "axis" }, svg);
  }
  function barWidth(n) { return Math.max(12, Math.min(36, Math.floor(640 / Math.max(n, 1)))); }
  function niceTicks(lo, hi, n) {
    var span = hi - lo || 1, step = Math.pow(10, Math.floor(Math.log10(span / n)));
    var err = span / n / step;
    if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
    var out = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) out.push(v);
    return out;
  }

  // Per-layer SQNR: one bar per layer; an exact layer (inf) reaches the top, in green.
  function drawSqnr(box) {
    var rows = data.layers.filter(function (l) { return !isNaN(num(l.sqnr_db)); });
    var bw = barWidth(rows.length), left = 48, top = 20, h = 220, bottom = 24;
    var width = Math.max(720, left + rows.length * bw + 20);
    var svg = svgFor(width, top + h + bottom);
    var finite = rows.map(function (l) { return num(l.sqnr_db); }).filter(isFinite);
    var hi = Math.max(10, Math.max.apply(null, finite.concat([0])) * 1.1);
    var lo = Math.min(0, Math.min.apply(null, finite.concat([0])));
    var y = function (v) { return top + h - (v - lo) / (hi - lo) * h; };
    yAxis(svg, left, width - 10, y, lo, hi, niceTicks(lo, hi, 5),
      function (v) { return v.toFixed(0) + " dB"; });
    rows.forEach(function (l, i) {
      var v = num(l.sqnr_db), x = left + 2 + i * bw;
      var top_ = isFinite(v) ? y(Math.max(v, lo)) : y(hi);
      var base = y(Math.max(0, lo));
      var r = el("rect", { x: x, width: bw - 3, y: Math.min(top_, base),
        height: Math.max(1, Math.abs(base - top_)),
        "class": "mark " + (isFinite(v) ? opClass(l.op) : "bar-inf") }, svg);
      tip(r, l.name + " (" + l.op + ")\nSQNR " + fmt(v) + " dB\n" + l.tensor + " vs " +
        l.fp32_tensor);
      if (i % Math.ceil(rows.length / 40) === 0)
        label(svg, x + (bw - 3) / 2, top + h + 12, String(l.index), "", "middle");
    });
    label(svg, left, 11, "SQNR (dB) of each layer's dequantized output vs fp32; x: node index",
      "title");
    finish(box, svg);
  }

  // Accumulator ranges on a log2 scale: observed max |acc| (bar), bounds (markers),
  // the 2^24 (float32-exact) and 2^31 (int32) limits.
  function drawAcc(box) {
    var rows = data.layers.filter(function (l) { return l.accumulator; });
    var bw = barWidth(rows.length), left = 48, top = 20, h = 230, bottom = 24;
    var width = Math.max(720, left + rows.length * bw + 130);
    var svg = svgFor(width, top + h + bottom);
    var lo = 0, hi = 33;
    var y = function (v) {
      var l2 = v > 0 ? Math.log2(v) : 0;
      return top + h - (Math.min(Math.max(l2, lo), hi) - lo) / (hi - lo) * h;
    };
    var ticks = [1, 1 << 4, 1 << 8, 1 << 12, 1 << 16, 1 << 20, Math.pow(2, 28), Math.pow(2, 32)];
    yAxis(svg, left, width - 120, y, 1, Math.pow(2, hi), ticks,
      function (v) { return "2^" + Math.round(Math.log2(v)); });
    [[data.limits.f32_exact, "2^24 float32-exact"], [data.limits.int32, "2^31 int32"]]
      .forEach(function (p) {
        el("line", { x1: left, x2: width - 120, y1: y(p[0]), y2: y(p[0]), "class": "limit" }, svg);
        label(svg, width - 116, y(p[0]) + 3, p[1], "", "start");
      });
    rows.forEach(function (l, i) {
      var a = l.accumulator, x = left + 2 + i * bw;
      var amax = a.absmax === null ? 0 : a.absmax;
      var r = el("rect", { x: x, width: bw - 4, y: y(Math.max(amax, 1)),
        height: Math.max(1, y(1) - y(Math.max(amax, 1))), "class": "mark " + opClass(l.op) },
        svg);
      tip(r, l.name + "\nobserved acc [" + a.min + ", " + a.max + "]\nbound (int8 input range) " +
        a.bound + "\nbound (observed input range) " + a.bound_observed_input);
      var b = el("rect", { x: x - 1, width: bw - 2, y: y(a.bound) - 2, height: 4,
        "class": "mark bound" }, svg);
      tip(b, l.name + ": bound " + a.bound + " (|x| <= " + a.bound_x_absmax + ")");
      var c = el("circle", { cx: x + (bw - 4) / 2, cy: y(a.bound_observed_input), r: 3,
        "class": "mark bound-obs" }, svg);
      tip(c, l.name + ": bound with the observed input range " + a.bound_observed_input);
      if (i % Math.ceil(rows.length / 40) === 0)
        label(svg, x + (bw - 4) / 2, top + h + 12, String(l.index), "", "middle");
    });
    label(svg, left, 11, "max |accumulator| (log2): observed (bar); bound for int8 inputs " +
      "(orange), for the observed inputs (circle)", "title");
    finish(box, svg);
  }

  // Cycles per layer on the array: estimated (bar) and ideal (inner bar).
  function drawCycles(box) {
    var rows = data.layers.filter(function (l) { return l.array; });
    var bw = barWidth(rows.length), left = 64, top = 20, h = 220, bottom = 24;
    var width = Math.max(720, left + rows.length * bw + 20);
    var svg = svgFor(width, top + h + bottom);
    var hi = Math.max.apply(null, rows.map(function (l) { return l.array.est_cycles; })
      .concat([1]));
    var y = function (v) { return top + h - v / hi * h; };
    yAxis(svg, left, width - 10, y, 0, hi, niceTicks(0, hi, 5),
      function (v) { return fmt(v, 0); });
    rows.forEach(function (l, i) {
      var a = l.array, x = left + 2 + i * bw;
      var r = el("rect", { x: x, width: bw - 4, y: y(a.est_cycles),
        height: Math.max(1, y(0) - y(a.est_cycles)), "class": "mark bar-conv" }, svg);
      tip(r, l.name + "\nI x K x J = " + a.I + " x " + a.K + " x " + a.J +
        (a.groups > 1 ? " x " + a.groups + " groups" : "") + "\ntiles " + a.tiles +
        "\nestimated cycles " + a.est_cycles + "\nideal cycles " + fmt(a.ideal_cycles, 1) +
        "\nutilization " + (100 * a.utilization).toFixed(1) + " %");
      el("rect", { x: x + 2, width: Math.max(1, bw - 8), y: y(a.ideal_cycles),
        height: Math.max(0.5, y(0) - y(a.ideal_cycles)), "class": "mark bar-ideal" }, svg);
      if (i % Math.ceil(rows.length / 40) === 0)
        label(svg, x + (bw - 4) / 2, top + h + 12, String(l.index), "", "middle");
    });
    label(svg, left, 11, "cycles per inference: estimated (dark) and ideal (light), DIM " +
      data.meta.dim, "title");
    finish(box, svg);
  }

  // One activation histogram (log count), clip range lines, the outside shaded.
  function drawHist(box) {
    var a = data.activations[Number(box.getAttribute("data-index"))];
    var left = 44, top = 8, w = 240, h = 90, bottom = 18;
    var svg = svgFor(left + w + 8, top + h + bottom);
    var lo = a.edges[0], hi = a.edges[1], n = a.counts.length;
    var x = function (v) { return left + (v - lo) / (hi - lo) * w; };
    var cmax = Math.max.apply(null, a.counts.concat([1]));
    var lmax = Math.log10(1 + cmax);
    var y = function (c) { return top + h - Math.log10(1 + c) / lmax * h; };
    var cl = Math.max(lo, a.clip[0]), ch = Math.min(hi, a.clip[1]);
    if (cl > lo) el("rect", { x: left, y: top, width: x(cl) - left, height: h,
      "class": "outside" }, svg);
    if (ch < hi) el("rect", { x: x(ch), y: top, width: left + w - x(ch), height: h,
      "class": "outside" }, svg);
    for (var i = 0; i < n; i++) {
      if (!a.counts[i]) continue;
      var x0 = left + i / n * w;
      var r = el("rect", { x: x0, width: Math.max(0.8, w / n - 0.6), y: y(a.counts[i]),
        height: Math.max(0.5, y(0) - y(a.counts[i])), "class": "mark bar-hist" }, svg);
      var e0 = lo + (hi - lo) * i / n, e1 = lo + (hi - lo) * (i + 1) / n;
      tip(r, "[" + fmt(e0, 3) + ", " + fmt(e1, 3) + "): " + a.counts[i]);
    }
    [a.clip[0], a.clip[1]].forEach(function (v) {
      if (v >= lo && v <= hi)
        el("line", { x1: x(v), x2: x(v), y1: top, y2: top + h, "class": "mark cliplim" }, svg);
    });
    el("line", { x1: left, x2: left + w, y1: top + h, y2: top + h, "class": "axis" }, svg);
    el("line", { x1: left, x2: left, y1: top, y2: top + h, "class": "axis" }, svg);
    label(svg, left, top + h + 12, fmt(lo, 2), "", "start");
    label(svg, left + w, top + h + 12, fmt(hi, 2), "", "end");
    if (lo < 0 && hi > 0) label(svg, x(0), top + h + 12, "0", "", "middle");
    label(svg, left - 3, top + 8, String(cmax), "", "end");
    finish(box, svg);
  }

  var draw = { sqnr: drawSqnr, acc: drawAcc, cycles: drawCycles, hist: drawHist };
  var boxes = document.querySelectorAll("div.chart[data-chart]");
  for (var i = 0; i < boxes.length; i++) {
    var kind = boxes[i].getAttribute("data-chart");
    try {
      if (draw[kind]) draw[kind](boxes[i]);
    } catch (err) {
      boxes[i].setAttribute("data-error", String(err));
    }
  }
  document.body.setAttribute("data-charts-drawn", String(drawn));
})();
"""
