"""How fast the labelling view moves on: key press to next image on screen, label round-trip.

Starts a real ``svplabel serve`` on a fresh SQLite database in a temporary folder, writes a round in
``labeling`` with a batch of ``--items`` images straight into it, signs an annotator in through
Debian's chromium and labels the batch by keys. Measured inside the page:

- key to next image: ``performance.now()`` at keydown (a capturing listener, before the app's own)
  to the moment the next ``<img>`` has decoded and a frame with it has been painted (the app's
  ``svp:shown`` event, fired from a task queued in ``requestAnimationFrame``);
- label round-trip: ``POST /api/labels`` from send to answer (the app's ``svp:label-sent``).

Usage: ``python bench/ui_label_speed.py [--items 220] [--labels 200] [--think-ms 120] [--out F]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import procs  # noqa: E402
from tests.browser_support import (  # noqa: E402
    ADMIN,
    PASSWORD,
    Api,
    chromium_missing_reason,
    insert_items,
    insert_labeling_round,
    launched_browser,
    make_user,
    sign_in,
)

CLASSES = ["airplane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "Enter"]

PROBE = """() => {
  window.__bench = { t0: null, shown: [], rtt: [], cold: 0 };
  document.addEventListener('keydown', () => { window.__bench.t0 = performance.now(); },
                            { capture: true });
  window.addEventListener('svp:shown', (e) => {
    if (window.__bench.t0 === null) return;
    window.__bench.shown.push(e.detail.t - window.__bench.t0);
    if (!e.detail.prefetched) window.__bench.cold += 1;
    window.__bench.t0 = null;
  });
  window.addEventListener('svp:label-sent', (e) => window.__bench.rtt.push(e.detail.ms));
}"""


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    """Count, median, p95 and max in milliseconds."""
    if not values:
        return {"n": 0, "median_ms": float("nan"), "p95_ms": float("nan"), "max_ms": float("nan")}
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values), 2),
        "p95_ms": round(percentile(values, 0.95), 2),
        "max_ms": round(max(values), 2),
    }


def run(items: int, labels: int, think_ms: int) -> dict[str, Any]:
    """Start the server, make the batch, label it in chromium, return the figures."""
    tmp = Path(tempfile.mkdtemp(prefix="svp-ui-bench-"))
    try:
        database_url = f"sqlite:///{tmp / 'svp.sqlite3'}"
        with procs.stack(tmp, database_url=database_url) as stack:
            stack.serve()
            admin = Api(stack.url, *ADMIN)
            make_user(admin, "eng", "engineer")
            make_user(admin, "ann", "annotator")
            eng = Api(stack.url, "eng", PASSWORD)
            project = eng("POST", "/api/projects", json={"name": "bench", "classes": CLASSES})
            pid = project["id"]
            member = {"username": "ann", "role": "annotator"}
            eng("PUT", f"/api/projects/{pid}/members", json=member)
            ids = insert_items(database_url, stack.data_dir, pid, items)
            insert_labeling_round(database_url, pid, ids, CLASSES)
            with launched_browser() as browser:
                context = browser.new_context(viewport={"width": 1280, "height": 860})
                page = context.new_page()
                sign_in(page, stack.url, "ann")
                page.goto(f"{stack.url}/#/projects/{pid}/label")
                page.locator("#stage img[data-item-id]").wait_for()
                page.evaluate(PROBE)
                started = time.perf_counter()
                for i in range(labels):
                    page.keyboard.press(KEYS[i % len(KEYS)])
                    page.wait_for_function(
                        "(n) => window.__bench.shown.length >= n || !!document.querySelector("
                        "'#batch-state')",
                        arg=i + 1,
                    )
                    if think_ms:
                        page.wait_for_timeout(think_ms)
                elapsed = time.perf_counter() - started
                page.wait_for_function(
                    "() => JSON.parse(localStorage.getItem('svp.outbox.v1') || '[]').length === 0"
                )
                data = page.evaluate("() => window.__bench")
                context.close()
            admin.close()
            eng.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "items_in_batch": items,
        "labels": labels,
        "think_ms": think_ms,
        "seconds": round(elapsed, 2),
        "key_to_next_image": summary(data["shown"]),
        # Shows whose image was not yet decoded when its turn came (the prefetch fell behind).
        "not_prefetched": data["cold"],
        "label_round_trip": summary(data["rtt"]),
    }


def main() -> None:
    """Parse arguments, run, print a table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=220, help="images in the batch")
    parser.add_argument("--labels", type=int, default=200, help="key presses to measure")
    parser.add_argument(
        "--think-ms", type=int, default=120, help="pause after each image, like a fast annotator"
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    missing = chromium_missing_reason()
    if missing:
        sys.exit(f"cannot run: {missing}")
    if args.labels > args.items:
        sys.exit("--labels must not exceed --items")
    result = run(args.items, args.labels, args.think_ms)
    print(
        f"labelling view, {result['labels']} labels over a batch of {result['items_in_batch']}, "
        f"{result['think_ms']} ms pause per image, {result['seconds']} s in all"
    )
    print(f"{'measure':<34}{'n':>6}{'median ms':>12}{'p95 ms':>10}{'max ms':>10}")
    for name, key in [
        ("key press -> next image painted", "key_to_next_image"),
        ("label POST round-trip", "label_round_trip"),
    ]:
        s = result[key]
        print(f"{name:<34}{s['n']:>6}{s['median_ms']:>12}{s['p95_ms']:>10}{s['max_ms']:>10}")
    print(f"images not decoded ahead of their turn: {result['not_prefetched']}")
    target = result["key_to_next_image"]["p95_ms"]
    print(f"target: next image under 50 ms -> {'met' if target < 50 else 'NOT met'} (p95)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
