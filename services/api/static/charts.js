/* Small SVG charts for the dashboard (no library, nothing fetched from a CDN).
   lineChart(el, {series: [{name, points: [[x, y], ...]}], xLabel, log})
   barChart(el, {categories: [...], series: [{name, values: [...]}]}) */
"use strict";
const SkuCharts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
  const W = 520, H = 260, M = {left: 58, right: 12, top: 12, bottom: 34};

  function el(tag, attrs, parent, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function ticks(min, max, count) {
    if (min === max) { min -= 1; max += 1; }
    const raw = (max - min) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map(f => f * mag).find(s => s >= raw);
    const out = [];
    const last = Math.ceil(max / step - 1e-9) * step;
    for (let v = Math.floor(min / step + 1e-9) * step; v <= last + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }

  function fmt(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1);
    return +v.toPrecision(3) + "";
  }

  function legend(container, names) {
    const box = document.createElement("div");
    box.className = "legend";
    names.forEach((name, i) => {
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = COLORS[i % COLORS.length];
      item.append(swatch, name);
      box.appendChild(item);
    });
    container.appendChild(box);
  }

  function frame(container) {
    container.textContent = "";
    return el("svg", {viewBox: `0 0 ${W} ${H}`, role: "img"}, container);
  }

  function lineChart(container, {series, xLabel = "epoch", log = false}) {
    series = series.filter(s => s.points.some(p => p[1] !== null && isFinite(p[1]) && (!log || p[1] > 0)));
    const svg = frame(container);
    if (!series.length) { el("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, svg, "no data yet"); return; }
    const tf = log ? v => Math.log10(v) : v => v;
    const pts = series.flatMap(s => s.points.filter(p => p[1] !== null && (!log || p[1] > 0)));
    const xs = pts.map(p => p[0]), ys = pts.map(p => tf(p[1]));
    let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    const yt = ticks(Math.min(...ys), Math.max(...ys), 4);
    const [y0, y1] = [yt[0], yt[yt.length - 1]];
    const sx = x => M.left + (x - x0) / (x1 - x0) * (W - M.left - M.right);
    const sy = y => H - M.bottom - (y - y0) / (y1 - y0 || 1) * (H - M.top - M.bottom);
    yt.forEach(t => {
      el("line", {class: "grid", x1: M.left, x2: W - M.right, y1: sy(t), y2: sy(t)}, svg);
      el("text", {x: M.left - 6, y: sy(t) + 4, "text-anchor": "end"}, svg, log ? fmt(Math.pow(10, t)) : fmt(t));
    });
    ticks(x0, x1, Math.min(8, Math.max(1, x1 - x0))).filter(t => t >= x0 && t <= x1).forEach(t => {
      el("text", {x: sx(t), y: H - M.bottom + 16, "text-anchor": "middle"}, svg, fmt(t));
    });
    el("line", {class: "axis", x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom}, svg);
    el("line", {class: "axis", x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom}, svg);
    el("text", {x: (W + M.left) / 2, y: H - 4, "text-anchor": "middle"}, svg, xLabel);
    series.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      const good = s.points.filter(p => p[1] !== null && isFinite(p[1]) && (!log || p[1] > 0));
      el("polyline", {fill: "none", stroke: color, "stroke-width": 2,
                      points: good.map(p => `${sx(p[0])},${sy(tf(p[1]))}`).join(" ")}, svg);
      good.forEach(p => {
        const dot = el("circle", {cx: sx(p[0]), cy: sy(tf(p[1])), r: 3, fill: color}, svg);
        el("title", {}, dot, `${s.name}, ${xLabel} ${p[0]}: ${fmt(p[1])}`);
      });
    });
    legend(container, series.map(s => s.name));
  }

  function barChart(container, {categories, series}) {
    const svg = frame(container);
    const values = series.flatMap(s => s.values).filter(v => v !== null && isFinite(v));
    if (!values.length) { el("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, svg, "no data"); return; }
    const yt = ticks(0, Math.max(...values, 0), 4);
    const y1 = yt[yt.length - 1] || 1;
    const sy = v => H - M.bottom - v / y1 * (H - M.top - M.bottom);
    yt.forEach(t => {
      el("line", {class: "grid", x1: M.left, x2: W - M.right, y1: sy(t), y2: sy(t)}, svg);
      el("text", {x: M.left - 6, y: sy(t) + 4, "text-anchor": "end"}, svg, fmt(t));
    });
    const groupW = (W - M.left - M.right) / categories.length;
    const barW = groupW * 0.8 / series.length;
    categories.forEach((cat, ci) => {
      const gx = M.left + ci * groupW + groupW * 0.1;
      el("text", {x: gx + groupW * 0.4, y: H - M.bottom + 16, "text-anchor": "middle"}, svg, cat);
      series.forEach((s, si) => {
        const v = s.values[ci];
        if (v === null || !isFinite(v)) return;
        const bar = el("rect", {x: gx + si * barW, y: sy(v), width: Math.max(barW - 2, 1),
                                height: H - M.bottom - sy(v), fill: COLORS[si % COLORS.length]}, svg);
        el("title", {}, bar, `${s.name}, ${cat}: ${fmt(v)}`);
      });
    });
    el("line", {class: "axis", x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom}, svg);
    legend(container, series.map(s => s.name));
  }

  return {lineChart, barChart, COLORS};
})();
