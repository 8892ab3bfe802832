// The learning curve: labels against the proxy's test accuracy, one line per strategy and
// proxy, and the target's accuracy from evaluations.
// Depends on: ../api.js, ../chart.js, ../dom.js, ./points.js.

import { get } from "../api.js";
import { drawLearningCurve } from "../chart.js";
import { fill, h } from "../dom.js";
import { evaluationPoint, roundPoint } from "./points.js";

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

export function createCurve({ pid }) {
  const box = h("div", { class: "chart-box", id: "learning-curve" });
  const note = h("p", { class: "chart-legend-note" });
  let rounds = [];
  let evaluations = [];

  function draw() {
    // One line per strategy: the curve is how a team compares them on its own data.
    const byStrategy = new Map();
    for (const r of [...rounds].sort((a, b) => a.number - b.number)) {
      const p = roundPoint(r);
      if (p.labels === null || p.acc === null) continue;
      const name = `${r.strategy} (${r.proxy.arch})`;
      if (!byStrategy.has(name)) byStrategy.set(name, []);
      byStrategy.get(name).push(p);
    }
    const targetPoints = evaluations.filter((j) => j.status === "succeeded").map(evaluationPoint).filter((p) => p.labels !== null && p.acc !== null);
    const lines = [...byStrategy].map(([name, points]) => ({ name, points }));
    if (targetPoints.length) lines.push({ name: "target", points: targetPoints, target: true });
    if (!lines.length) {
      fill(box, h("p", { class: "muted" }, "The curve appears once a round has measured its proxy on the labelled test split."));
      note.textContent = "";
      return;
    }
    drawLearningCurve(box, lines);
    const proxyCount = [...byStrategy.values()].reduce((n, pts) => n + pts.length, 0);
    note.textContent = `${plural(proxyCount, "round")} with a proxy accuracy${targetPoints.length ? `, ${plural(targetPoints.length, "target evaluation")}` : ""}. Accuracy is on the labelled test split.`;
  }

  function setRounds(list) {
    rounds = list;
    draw();
  }

  async function loadEvaluations() {
    try {
      evaluations = await get(`/api/projects/${pid}/evaluations`);
    } catch {
      evaluations = [];
    }
    draw();
  }

  return { box, note, setRounds, loadEvaluations };
}
