/* A tiny line chart on <canvas>: several series, auto-scaled axes, redrawn on demand. No dependencies.
 *
 *   var c = new MiniChart(canvasElement, [{name: "accuracy", color: "#2f6fde"}, {name: "loss", color: "#d14343"}]);
 *   c.push(0, x, y);   // add a point to series 0
 */
(function (global) {
  "use strict";

  function MiniChart(canvas, series, opts) {
    this.canvas = canvas;
    this.series = series.map(function (s) { return {name: s.name, color: s.color, points: []}; });
    this.opts = opts || {};
    this.pending = false;
    this.count = 0;
    var self = this;
    if (global.ResizeObserver) {
      new global.ResizeObserver(function () { self.draw(); }).observe(canvas);
    }
    this.draw();
  }

  MiniChart.prototype.push = function (index, x, y) {
    if (y === null || y === undefined || !isFinite(y)) { return; }
    var pts = this.series[index].points;
    pts.push([x, y]);
    if (pts.length > 5000) { pts.splice(0, pts.length - 5000); }
    this.count += 1;
    this.canvas.setAttribute("data-points", String(this.count));
    this.schedule();
  };

  MiniChart.prototype.schedule = function () {
    if (this.pending) { return; }
    this.pending = true;
    var self = this;
    (global.requestAnimationFrame || global.setTimeout)(function () { self.pending = false; self.draw(); });
  };

  function niceRange(lo, hi) {
    if (lo === hi) { lo -= 0.5; hi += 0.5; }
    var pad = (hi - lo) * 0.05;
    return [lo - pad, hi + pad];
  }

  function fmt(v) {
    var a = Math.abs(v);
    if (a >= 1000) { return v.toFixed(0); }
    if (a >= 10) { return v.toFixed(1); }
    return v.toFixed(2);
  }

  MiniChart.prototype.draw = function () {
    var c = this.canvas, dpr = global.devicePixelRatio || 1;
    var w = c.clientWidth || 480, h = c.clientHeight || 220;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
    }
    var g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    var left = 44, right = 16, top = 10, bottom = 24, o = this.opts;
    var pw = w - left - right, ph = h - top - bottom;
    var xs = [], ys = [];
    this.series.forEach(function (s) { s.points.forEach(function (p) { xs.push(p[0]); ys.push(p[1]); }); });
    g.font = "11px system-ui, sans-serif";
    g.strokeStyle = "#e3e6eb"; g.fillStyle = "#667085"; g.lineWidth = 1;
    if (!xs.length) {
      g.strokeRect(left + 0.5, top + 0.5, pw, ph);
      g.textAlign = "center";
      g.fillText(this.opts.empty || "waiting for data…", left + pw / 2, top + ph / 2);
      return;
    }
    var xr = (o.xMin !== undefined && o.xMax !== undefined) ? [o.xMin, o.xMax]
      : niceRange(Math.min.apply(null, xs), Math.max.apply(null, xs));
    if (o.xInteger) {
      var lo = Math.floor(Math.min.apply(null, xs));
      xr = [lo, Math.max(Math.ceil(Math.max.apply(null, xs)), lo + 1)];
    }
    var yr = niceRange(this.opts.yMin !== undefined ? Math.min(this.opts.yMin, Math.min.apply(null, ys)) : Math.min.apply(null, ys),
                       Math.max.apply(null, ys));
    function X(v) { return left + (v - xr[0]) / (xr[1] - xr[0]) * pw; }
    function Y(v) { return top + ph - (v - yr[0]) / (yr[1] - yr[0]) * ph; }
    g.textAlign = "right"; g.textBaseline = "middle";
    for (var i = 0; i <= 4; i++) {
      var yv = yr[0] + (yr[1] - yr[0]) * i / 4, yy = Math.round(Y(yv)) + 0.5;
      g.beginPath(); g.moveTo(left, yy); g.lineTo(left + pw, yy); g.stroke();
      g.fillText(fmt(yv), left - 6, yy);
    }
    g.textBaseline = "top";
    var ticks = [];
    if (o.xInteger) {
      var stepI = Math.max(1, Math.ceil((xr[1] - xr[0]) / 6));
      for (var t = xr[0]; t <= xr[1]; t += stepI) { ticks.push(t); }
    } else {
      for (var j = 0; j <= 4; j++) { ticks.push(xr[0] + (xr[1] - xr[0]) * j / 4); }
    }
    ticks.forEach(function (xv, k) {
      g.textAlign = k === 0 ? "left" : (k === ticks.length - 1 ? "right" : "center");
      g.fillText(o.xInteger ? String(xv) : (o.xSuffix ? xv.toFixed(0) + o.xSuffix : fmt(xv)), X(xv), top + ph + 6);
    });
    this.series.forEach(function (s) {
      if (!s.points.length) { return; }
      g.strokeStyle = s.color; g.lineWidth = 1.8; g.beginPath();
      s.points.forEach(function (p, k) { if (k) { g.lineTo(X(p[0]), Y(p[1])); } else { g.moveTo(X(p[0]), Y(p[1])); } });
      g.stroke();
      if (s.points.length < 40) {
        g.fillStyle = s.color;
        s.points.forEach(function (p) { g.beginPath(); g.arc(X(p[0]), Y(p[1]), 2.5, 0, 6.3); g.fill(); });
      }
    });
  };

  global.MiniChart = MiniChart;
})(window);
