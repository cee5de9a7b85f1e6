/* A small dependency-free SVG line chart: several series over epochs, axes, ticks, legend, hover values. */
"use strict";
(function (global) {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];

  function el(name, attrs, parent) {
    const e = document.createElementNS(NS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  function niceTicks(lo, hi, n) {
    if (!isFinite(lo) || !isFinite(hi)) return [];
    if (lo === hi) { const d = Math.abs(lo) * 0.1 || 1; lo -= d; hi += d; }
    const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map(m => m * mag).find(s => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    const a = Math.abs(v);
    return (a !== 0 && (a < 1e-3 || a >= 1e5)) ? v.toExponential(2) : +v.toPrecision(4) + "";
  }

  /* One format for every label of an axis (not 0.0005 next to 1.00e-3): fixed decimals from the step, or
     exponents throughout when the values are tiny or huge. */
  function tickLabels(ticks) {
    if (!ticks.length) return [];
    const a = Math.max(...ticks.map(Math.abs));
    const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : (a || 1);
    if (a >= 1e5 || (a > 0 && a < 1e-3)) return ticks.map(v => v.toExponential(2));
    const d = Math.max(0, Math.min(10, -Math.floor(Math.log10(step) + 1e-9)));
    return ticks.map(v => v.toFixed(d));
  }

  /** LineChart(container, {title}) ; chart.update({name: [[epoch, value], ...], ...}) */
  function LineChart(container, opts) {
    this.container = container;
    this.opts = opts || {};
    this.series = {};
    container.classList.add("chart");
    this.legend = document.createElement("div");
    this.legend.className = "legend";
    this.svg = el("svg", { viewBox: "0 0 600 240", preserveAspectRatio: "none" });
    container.appendChild(this.svg);
    container.appendChild(this.legend);
  }

  LineChart.prototype.update = function (series) {
    this.series = series;
    this.render();
  };

  LineChart.prototype.pointCount = function () {
    return Object.values(this.series).reduce((n, s) => n + s.length, 0);
  };

  LineChart.prototype.render = function () {
    const svg = this.svg, W = 600, H = 240, L = 56, R = 12, T = 10, B = 28;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const names = Object.keys(this.series).sort();
    let xs = [], ys = [];
    names.forEach(n => this.series[n].forEach(p => { if (isFinite(p[1])) { xs.push(p[0]); ys.push(p[1]); } }));
    this.legend.innerHTML = "";
    names.forEach((n, i) => {
      const s = document.createElement("span");
      const last = this.series[n].length ? this.series[n][this.series[n].length - 1][1] : null;
      const swatch = document.createElement("i");
      swatch.style.background = COLORS[i % COLORS.length]; // CSSOM, not a style attribute: the CSP allows no inline style
      s.appendChild(swatch);
      s.appendChild(document.createTextNode(`${n} ${fmt(last)}`));
      this.legend.appendChild(s);
    });
    if (!xs.length) {
      el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#687380", "font-size": 13 }, svg).textContent =
        "waiting for the first epoch";
      return;
    }
    const x0 = Math.min(1, ...xs), x1 = Math.max(x0 + 1, ...xs);
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (y0 === y1) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
    const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
    const sx = v => L + (v - x0) / (x1 - x0) * (W - L - R);
    const sy = v => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
    const grid = el("g", { stroke: "#e5e9ef", "stroke-width": 1 }, svg);
    const labels = el("g", { fill: "#687380", "font-size": 11 }, svg);
    const yt = niceTicks(y0, y1, 5), ytext = tickLabels(yt);
    yt.forEach((v, i) => {
      el("line", { x1: L, x2: W - R, y1: sy(v), y2: sy(v) }, grid);
      el("text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end", class: "ytick" }, labels).textContent = ytext[i];
    });
    niceTicks(x0, x1, Math.min(8, x1 - x0)).filter(v => Number.isInteger(v)).forEach(v => {
      el("line", { x1: sx(v), x2: sx(v), y1: T, y2: H - B }, grid);
      el("text", { x: sx(v), y: H - B + 16, "text-anchor": "middle" }, labels).textContent = v;
    });
    el("text", { x: W - R, y: H - 4, "text-anchor": "end", fill: "#687380", "font-size": 11 }, svg).textContent = "epoch";
    names.forEach((n, i) => {
      const pts = this.series[n].filter(p => isFinite(p[1]));
      const color = COLORS[i % COLORS.length];
      el("polyline", { points: pts.map(p => `${sx(p[0])},${sy(p[1])}`).join(" "), fill: "none", stroke: color,
        "stroke-width": 2, "data-series": n }, svg);
      pts.forEach(p => {
        const c = el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: color, class: "pt", "data-series": n }, svg);
        el("title", {}, c).textContent = `${n} @ epoch ${p[0]}: ${fmt(p[1])}`;
      });
    });
  };

  global.LineChart = LineChart;
  global.fmtNum = fmt;
})(window);
