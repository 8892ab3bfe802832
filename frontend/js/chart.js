// The learning curve: accuracy on the labelled test split against the number of labels, one
// line per strategy the rounds used (and one for target evaluations), drawn with uPlot
// (vendored, see /vendor/README.md).

import uPlot from "../vendor/uplot/uPlot.esm.js";

const charts = new WeakMap();
// Distinguishable on white and for the common colour-vision deficiencies (Okabe-Ito).
const COLOURS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000"];
const TARGET_COLOUR = "#2e7d4f";

/**
 * Draw (or redraw) the curve into `box`. `lines` is `[{name, points, target?}]`, each point
 * `{labels, acc}` with acc in 0..1; a target line is dashed.
 */
export function drawLearningCurve(box, lines) {
  const xs = [...new Set(lines.flatMap((l) => l.points.map((p) => p.labels)))].sort((a, b) => a - b);
  const at = (points) => {
    const byX = new Map(points.map((p) => [p.labels, p.acc * 100]));
    return xs.map((x) => (byX.has(x) ? byX.get(x) : null));
  };
  const data = [xs, ...lines.map((l) => at(l.points))];
  const width = Math.max(280, box.clientWidth || 480);
  const old = charts.get(box);
  if (old) old.destroy();
  box.replaceChildren();
  const value = (u, v) => (v == null ? "—" : `${v.toFixed(1)}%`);
  let next = 0;
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
      ...lines.map((l) => {
        const colour = l.target ? TARGET_COLOUR : COLOURS[next++ % COLOURS.length];
        return {
          label: l.name, stroke: colour, width: 2, spanGaps: true, value,
          dash: l.target ? [6, 4] : undefined, points: { size: 7, fill: colour },
        };
      }),
    ],
  };
  const chart = new uPlot(opts, data, box);
  charts.set(box, chart);
  box.setAttribute("role", "img");
  box.setAttribute("aria-label", "Learning curve: " + lines.map((l) =>
    `${l.name}: ${l.points.map((p) => `${p.labels} labels ${Math.round(p.acc * 100)}%`).join(", ")}`).join("; "));
  if (!box.dataset.resizeBound) {
    box.dataset.resizeBound = "1";
    new ResizeObserver(() => {
      const c = charts.get(box);
      if (c && box.clientWidth && Math.abs(c.width - box.clientWidth) > 4) c.setSize({ width: box.clientWidth, height: 260 });
    }).observe(box);
  }
}
