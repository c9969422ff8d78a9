// Line charts as inline SVG: no library, scales to its container, labelled for screen readers.
import { h } from "./dom.js";

const W = 600;
const H = 200;
const PAD = { l: 64, r: 12, t: 12, b: 28 };

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// series: [{name, color, values: [number|null], dash?}], t: [epoch seconds]
export function lineChart({ title, t, series, format, summary, hline }) {
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  if (hline) all.push(hline.value);
  const ymax = niceMax(Math.max(0, ...all));
  const t0 = t[0] ?? 0;
  const t1 = t[t.length - 1] ?? 1;
  const x = (v) => PAD.l + ((v - t0) / Math.max(1, t1 - t0)) * (W - PAD.l - PAD.r);
  const y = (v) => H - PAD.b - (v / ymax) * (H - PAD.t - PAD.b);
  const svg = h("svg:svg", {
    class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}. ${summary || ""}`,
  }, h("svg:title", {}, title));
  for (let i = 0; i <= 4; i++) {
    const v = (ymax * i) / 4;
    svg.append(h("svg:line", { x1: PAD.l, x2: W - PAD.r, y1: y(v), y2: y(v), stroke: "#e3e7eb" }));
    svg.append(h("svg:text", { x: PAD.l - 6, y: y(v) + 4, "text-anchor": "end" }, format(v)));
  }
  const fmtT = (v) => new Date(v * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  for (const v of [t0, (t0 + t1) / 2, t1]) {
    svg.append(h("svg:text", { x: x(v), y: H - 8, "text-anchor": "middle" }, fmtT(v)));
  }
  if (hline) {
    svg.append(h("svg:line", {
      x1: PAD.l, x2: W - PAD.r, y1: y(hline.value), y2: y(hline.value),
      stroke: hline.color, "stroke-dasharray": "5 4",
    }));
  }
  for (const s of series) {
    let d = "";
    let pen = false;
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) { pen = false; return; }
      d += `${pen ? "L" : "M"}${x(t[i]).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    });
    if (d) {
      svg.append(h("svg:path", {
        d, fill: "none", stroke: s.color, "stroke-width": 2, "stroke-dasharray": s.dash || null,
        "data-series": s.name,
      }));
    }
  }
  const legend = h("div", { class: "legend", "aria-hidden": "true" },
    series.map((s) => h("span", {}, h("i", { style: `background:${s.color}` }), s.name)),
    hline ? h("span", {}, h("i", { style: `background:${hline.color}` }), hline.name) : null);
  return h("figure", { class: "chart-figure", style: "margin:0" }, svg, legend);
}
