// The project's counts (items, labelled, unlabelled, rounds) and its class balance: labelled items
// per class and split, from one request (GET .../class-counts), drawn as a table with bars.
// Depends on: ../api.js, ../dom.js. Nothing in ./ calls it but index.js.

import { get } from "../api.js";
import { fill, h } from "../dom.js";

export function createCounts({ pid }) {
  const stats = h("div", { class: "stats", id: "counts" });
  const balance = h("div", { id: "class-balance" });

  function renderStats(project) {
    const c = project.counts;
    fill(stats,
      [["items", c.items], ["labelled", c.labeled], ["unlabelled", c.unlabeled], ["rounds", c.rounds]].map(([name, n]) =>
        h("div", { class: "stat", "data-count": name }, h("b", null, n), h("span", null, name))));
  }

  async function renderBalance() {
    let body;
    try {
      body = await get(`/api/projects/${pid}/class-counts`);
    } catch (err) {
      fill(balance, h("p", { class: "muted" }, `Class balance unavailable: ${err.message}`));
      return;
    }
    const max = Math.max(1, ...body.counts.map((c) => c.pool + c.test));
    const num = (n) => h("td", { class: "num" }, n);
    fill(balance,
      h("table", { class: "balance" },
        h("caption", { class: "visually-hidden" }, "Labelled items per class and split"),
        h("thead", null, h("tr", null,
          h("th", { scope: "col" }, "Class"), h("th", { scope: "col", class: "num" }, "Labelled"),
          h("th", { scope: "col", class: "num" }, "Pool"), h("th", { scope: "col", class: "num" }, "Test"))),
        h("tbody", null, body.counts.map((c) => h("tr", { "data-class": c.label },
          h("th", { scope: "row" }, c.label),
          h("td", { class: "num" }, h("div", { class: "bar-cell" },
            // The bar repeats the number beside it: hidden from screen readers.
            h("span", { class: "bar-track", "aria-hidden": "true" },
              c.pool + c.test ? h("span", { class: "bar", style: { width: `${(100 * (c.pool + c.test)) / max}%` } }) : null),
            h("span", null, c.pool + c.test))),
          num(c.pool), num(c.test))))),
      h("p", { class: "small muted" }, `Unlabelled: ${body.unlabeled.pool} in the pool, ${body.unlabeled.test} in the test split.`));
  }

  /** Draw both from a freshly read project. */
  function render(project) {
    renderStats(project);
    return renderBalance();
  }

  return { stats, balance, render };
}
