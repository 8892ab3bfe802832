// The learning curve: accuracy on the labelled test split against the number of labels, drawn
// with uPlot (vendored, see /vendor/README.md).

import uPlot from "../vendor/uplot/uPlot.esm.js";

const charts = new WeakMap();

/** Draw (or redraw) the curve into `box`; points are `{labels, acc}` with acc in 0..1. */
export function drawLearningCurve(box, proxyPoints, targetPoints) {
  const xs = [...new Set([...proxyPoints, ...targetPoints].map((p) => p.labels))].sort((a, b) => a - b);
  const at = (points) => {
    const byX = new Map(points.map((p) => [p.labels, p.acc * 100]));
    return xs.map((x) => (byX.has(x) ? byX.get(x) : null));
  };
  const data = [xs, at(proxyPoints), at(targetPoints)];
  const width = Math.max(280, box.clientWidth || 480);
  const old = charts.get(box);
  if (old) old.destroy();
  box.replaceChildren();
  const opts = {
    width,
    height: 260,
    scales: { x: { time: false }, y: { range: [0, 100] } },
    axes: [
      { label: "labels", stroke: "#5b6475", grid: { stroke: "#eceff3" } },
      { label: "test accuracy (%)", stroke: "#5b6475", grid: { stroke: "#eceff3" } },
    ],
    series: [
      { label: "labels" },
      { label: "proxy", stroke: "#2f5fb3", width: 2, spanGaps: true, points: { size: 7, fill: "#2f5fb3" }, value: (u, v) => (v == null ? "—" : `${v.toFixed(1)}%`) },
      { label: "target", stroke: "#2e7d4f", width: 2, dash: [6, 4], spanGaps: true, points: { size: 7, fill: "#2e7d4f" }, value: (u, v) => (v == null ? "—" : `${v.toFixed(1)}%`) },
    ],
  };
  const chart = new uPlot(opts, data, box);
  charts.set(box, chart);
  box.setAttribute("role", "img");
  box.setAttribute("aria-label", `Learning curve: ${proxyPoints.map((p) => `${p.labels} labels, proxy ${Math.round(p.acc * 100)}%`).join("; ")}`
    + (targetPoints.length ? `; target: ${targetPoints.map((p) => `${p.labels} labels, ${Math.round(p.acc * 100)}%`).join("; ")}` : ""));
  if (!box.dataset.resizeBound) {
    box.dataset.resizeBound = "1";
    new ResizeObserver(() => {
      const c = charts.get(box);
      if (c && box.clientWidth && Math.abs(c.width - box.clientWidth) > 4) c.setSize({ width: box.clientWidth, height: 260 });
    }).observe(box);
  }
}
