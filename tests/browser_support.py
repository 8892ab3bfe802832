"""Helpers for driving the front end in Debian's chromium against real ``svplabel`` processes.

Used by tests/test_browser*.py (its fixtures, ``browser`` and ``stack``, reach them as a
pytest plugin named in tests/conftest.py) and bench/ui_label_speed.py. Data that a test needs but
that is not what it tests (users, a project, images, a round already in labelling) is made
through the real API, or written straight into the test's database and data dir the way the
server would.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

import app.models  # noqa: F401  (every table, so foreign keys resolve outside the app)
from app.items.models import Item
from app.items.storage import image_path
from app.rounds.models import Round, Selection
from tests import procs

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# axe-core, vendored with the front end for the tests only: no page of the app loads it.
AXE = Path(__file__).resolve().parent.parent / "frontend" / "vendor" / "axe-core" / "axe.min.js"
PASSWORD = "correct horse battery"
ADMIN = ("admin", "admin-password")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-output" / "screenshots"


TIMEOUT_MS = 15_000


def chromium_missing_reason() -> str | None:
    """Why browser tests cannot run here, or None when they can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is absent: install Debian's chromium (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    return None


@contextmanager
def launched_browser() -> Iterator[Any]:
    """Debian's chromium, headless, through playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One chromium for a test module; each test opens its own contexts."""
    with launched_browser() as b:
        yield b


@pytest.fixture
def stack(tmp_path: Path, database_url: str) -> Iterator[procs.Stack]:
    """A running server on this test's database."""
    with procs.stack(tmp_path, database_url=database_url) as s:
        s.serve()
        yield s


CLASSES = ["cat", "dog", "bird"]


def browser_marks() -> list[pytest.MarkDecorator]:
    """The marks of a browser test module: slow, and skipped with the reason without chromium."""
    missing = chromium_missing_reason()
    return [
        pytest.mark.browser,
        pytest.mark.slow,
        pytest.mark.skipif(missing is not None, reason=missing or ""),
    ]


def shown_item(page: Any) -> int:
    """The item on the labelling stage, once it is visible: an image once decoded, a text at
    once."""
    shown = page.locator("#stage [data-item-id]")
    shown.wait_for(state="visible")
    page.wait_for_function(
        "() => { const i = document.querySelector('#stage [data-item-id]');"
        " return i && (i.tagName !== 'IMG' || (i.complete && i.naturalWidth > 0)); }"
    )
    return int(shown.get_attribute("data-item-id"))


def wait_next(page: Any, before: int) -> int | None:
    """Wait until another item than ``before`` is on the stage (its id) or the end-of-batch
    note is (None)."""
    page.wait_for_function(
        """(before) => {
            const shown = document.querySelector('#stage [data-item-id]');
            if (shown) return Number(shown.dataset.itemId) !== before;
            return Boolean(document.querySelector('#batch-state'));
        }""",
        arg=before,
    )
    return None if page.locator("#batch-state").count() else shown_item(page)


OUTBOX_SIZE = "() => JSON.parse(localStorage.getItem('svp.outbox.v1') || '[]').length"


def wait_sent(page: Any, timeout: int = TIMEOUT_MS) -> None:
    """Wait until the server has acknowledged every label the page made."""
    page.wait_for_function(f"() => ({OUTBOX_SIZE})() === 0", timeout=timeout)


@pytest.fixture
def team(stack: procs.Stack) -> Iterator[dict[str, Any]]:
    """An engineer's project with two annotators in it (``ann``, ``ann2``), made through the
    API, and an annotator of no project (``newcomer``)."""
    admin = Api(stack.url, *ADMIN)
    users = [("eng", "engineer"), ("ann", "annotator"), ("ann2", "annotator")]
    for name, role in [*users, ("newcomer", "annotator")]:
        make_user(admin, name, role)
    eng = Api(stack.url, "eng", PASSWORD)
    project = eng("POST", "/api/projects", json={"name": "Animals", "classes": CLASSES})
    for name in ("ann", "ann2"):
        eng(
            "PUT",
            f"/api/projects/{project['id']}/members",
            json={"username": name, "role": "annotator"},
        )
    yield {"admin": admin, "eng": eng, "project": project}
    admin.close()
    eng.close()


def labeling_batch(stack: procs.Stack, database_url: str, project: dict[str, Any], n: int) -> Batch:
    """``n`` new items of the project as the batch of a round in labelling."""
    ids = insert_items(database_url, stack.data_dir, project["id"], n)
    return insert_labeling_round(database_url, project["id"], ids, project["classes"])


def new_page(browser: Any, width: int = 1280, height: int = 860) -> Any:
    """A page in a fresh context; ``page.errors`` collects uncaught errors and anything the
    Content-Security-Policy blocked."""
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    def on_console(message: Any) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            errors.append(message.text)

    page.on("console", on_console)
    page.errors = errors
    axe_requests: list[str] = []
    page.on("request", lambda r: axe_requests.append(r.url) if "axe" in r.url else None)
    page.axe_requests = axe_requests
    return page


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot under test-output/screenshots/ (gitignored)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    # From the top: a full-page capture of a scrolled page draws the sticky bar mid-page.
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page: Any, base_url: str, username: str, password: str = PASSWORD) -> None:
    """Sign in through the login form and wait for the project list."""
    page.goto(f"{base_url}/#/login")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/#/projects")
    page.get_by_role("heading", name="Projects").wait_for()
    page.wait_for_selector("[data-project], .notice")


class Api:
    """A signed-in HTTP client for setting up data through the real API."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30)
        r = self.http.post("/api/auth/login", json={"username": username, "password": password})
        r.raise_for_status()
        self.http.headers["X-CSRF-Token"] = r.json()["csrf_token"]

    def __call__(self, method: str, path: str, **kw: Any) -> Any:
        r = self.http.request(method, path, **kw)
        assert r.status_code < 400, f"{method} {path}: {r.status_code} {r.text}"
        return r.json() if r.content else None

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()


def make_user(admin: Api, username: str, role: str) -> dict[str, Any]:
    """A user with the shared test password."""
    return admin(
        "POST", "/api/users", json={"username": username, "password": PASSWORD, "role": role}
    )


def digit_png(seed: int, size: int = 32) -> bytes:
    """A small, distinct PNG: a coloured square with a few random blocks (like a CIFAR image)."""
    rnd = random.Random(seed)
    img = Image.new(
        "RGB", (size, size), (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
    )
    for _ in range(6):
        x, y = rnd.randrange(size - 6), rnd.randrange(size - 6)
        colour = (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
        for dx in range(6):
            for dy in range(6):
                img.putpixel((x + dx, y + dy), colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Batch:
    """A round in labelling with its batch, written straight to the database."""

    round_id: int
    item_ids: list[int]


def engine_for(database_url: str) -> Any:
    """An engine on the test's database that waits for the server's writes instead of failing."""
    if database_url.startswith("sqlite"):
        return create_engine(database_url, connect_args={"timeout": 30})
    return create_engine(database_url)


def insert_items(
    database_url: str,
    data_dir: Path,
    project_id: int,
    n: int,
    *,
    split: str = "pool",
    seed: int = 0,
) -> list[int]:
    """Store ``n`` distinct PNGs in the data dir and their items in the database."""
    images = data_dir / "images"
    rows = []
    for i in range(n):
        data = digit_png(seed * 100_000 + i)
        digest = hashlib.sha256(data).hexdigest()
        path = image_path(images, digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        rows.append(
            Item(
                project_id=project_id,
                content_hash=digest,
                name=f"{split}/img_{seed}_{i:05d}.png",
                media_type="image/png",
                width=32,
                height=32,
                split=split,
            )
        )
    engine = engine_for(database_url)
    try:
        with Session(engine) as db, db.begin():
            db.add_all(rows)
            db.flush()
            return [r.id for r in rows]
    finally:
        engine.dispose()


def insert_labeling_round(
    database_url: str,
    project_id: int,
    item_ids: list[int],
    classes: list[str],
    confidence: tuple[float, float] = (0.5, 0.95),
) -> Batch:
    """A round already in ``labeling`` whose batch is ``item_ids``, with suggestions whose
    confidence is drawn from ``confidence`` (at 0.5 and above they are pre-selected)."""
    engine = engine_for(database_url)
    rnd = random.Random(7)
    try:
        with Session(engine) as db, db.begin():
            number = (
                db.scalar(
                    select(Round.number)
                    .where(Round.project_id == project_id)
                    .order_by(Round.number.desc())
                )
                or 0
            ) + 1
            # As the worker does: how many items were labelled when the round began.
            labeled = db.scalar(
                select(func.count(Item.id)).where(
                    Item.project_id == project_id, Item.label.is_not(None)
                )
            )
            r = Round(
                project_id=project_id,
                number=number,
                status="labeling",
                strategy="least_confidence",
                batch_size=len(item_ids),
                proxy={"arch": "tiny_cnn", "epochs": 1},
                seed=0,
                metrics={"labeled": labeled},
            )
            db.add(r)
            db.flush()
            db.add_all(
                Selection(
                    round_id=r.id,
                    item_id=item_id,
                    rank=rank,
                    score=1.0 - rank / (len(item_ids) + 1),
                    suggested_label=classes[rank % len(classes)],
                    suggested_prob=round(rnd.uniform(*confidence), 3),
                )
                for rank, item_id in enumerate(item_ids)
            )
            return Batch(round_id=r.id, item_ids=list(item_ids))
    finally:
        engine.dispose()


def current_labels(database_url: str, item_ids: list[int]) -> dict[int, str | None]:
    """Each item's current label, read from the database."""
    engine = engine_for(database_url)
    try:
        with Session(engine) as db:
            rows = db.execute(select(Item.id, Item.label).where(Item.id.in_(item_ids))).tuples()
            return dict(rows.all())
    finally:
        engine.dispose()


def clean_env() -> dict[str, str]:
    """The environment without SVP_ settings (the stack sets its own)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SVP_")}


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """What axe-core finds wrong on the page as it is now: every rule of WCAG 2.x A and AA and
    axe's best practices, as ``{id, impact, help, nodes: [target, ...]}``."""
    # Evaluated over the DevTools protocol, which the page's Content-Security-Policy does not
    # govern: the app itself never loads axe.
    if not page.evaluate("() => Boolean(window.axe)"):
        page.evaluate(AXE.read_text())
    result = page.evaluate(
        """async () => {
            const r = await axe.run(document, { resultTypes: ["violations"] });
            return r.violations.map((v) => ({
                id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.map((n) => n.target.join(" ")),
            }));
        }"""
    )
    return list(result)


def contrast(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """WCAG contrast ratio of two sRGB colours (0-255 per channel)."""

    def lum(rgb: tuple[float, float, float]) -> float:
        lin = [
            c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
            for c in (x / 255 for x in rgb)
        ]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


# The focused element, its focus ring, the background the ring is drawn on (the nearest opaque
# one around the element) and whether the sticky top bar covers any of it.
FOCUS_STATE = """() => {
    const el = document.activeElement;
    // The page itself (focused after a route or the skip link) is a place, not a control.
    if (!el || el === document.body || el.tagName === "MAIN") return null;
    const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
    const style = getComputedStyle(el);
    let bg = null;
    for (let p = el.parentElement; p; p = p.parentElement) {
        const c = rgb(getComputedStyle(p).backgroundColor);
        if (c.length === 3 || c[3] > 0) { bg = c.slice(0, 3); break; }
    }
    const r = el.getBoundingClientRect();
    const bar = document.getElementById("topbar");
    const b = bar && !bar.hidden ? bar.getBoundingClientRect() : null;
    // Covered: the bar is what the page shows at the element's top edge or middle.
    const x = Math.min(Math.max(r.left + r.width / 2, 0), innerWidth - 1);
    const covered = Boolean(b) && !bar.contains(el) && [r.top + 2, r.top + r.height / 2]
        .some((y) => y >= 0 && y < innerHeight && bar.contains(document.elementFromPoint(x, y)));
    return {
        what: `${el.tagName.toLowerCase()}#${el.id} `
            + (el.getAttribute("aria-label") || el.textContent || "").trim().slice(0, 40),
        outline: style.outlineStyle, width: parseFloat(style.outlineWidth),
        ring: rgb(style.outlineColor).slice(0, 3), bg: bg || [255, 255, 255],
        covered, inView: r.bottom > 0 && r.top < innerHeight,
    };
}"""


def focus_problems(page: Any) -> list[str]:
    """Why the focused element's focus is hard to see, if it is: no ring, a ring under 3:1
    against what surrounds it (WCAG 1.4.11), or the sticky top bar over it (WCAG 2.4.11)."""
    state = page.evaluate(FOCUS_STATE)
    if state is None:
        return []
    problems = []
    if state["outline"] == "none" or state["width"] < 2:
        problems.append(f"{state['what']}: no visible focus ring")
    else:
        ratio = contrast(tuple(state["ring"]), tuple(state["bg"]))
        if ratio < 3:
            problems.append(f"{state['what']}: focus ring at {ratio:.2f}:1 against its background")
    if state["covered"]:
        problems.append(f"{state['what']}: under the sticky top bar")
    return problems
