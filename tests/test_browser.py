"""The front end in a real browser (Debian's chromium) against real ``svplabel`` processes.

Each test starts its own server (and worker where jobs run) on the test's database, signs users
in through the login form and drives the pages with the keyboard and mouse as a person would.
Screenshots of every page go to test-output/screenshots/.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.jobs.models import Job
from app.labeling.models import Label
from tests import procs
from tests.browser_support import (
    ADMIN,
    CLASSES,
    OUTBOX_SIZE,
    Api,
    browser_marks,
    current_labels,
    digit_png,
    engine_for,
    insert_items,
    insert_labeling_round,
    labeling_batch,
    new_page,
    screenshot,
    shown_item,
    sign_in,
    wait_next,
    wait_sent,
)

pytestmark = browser_marks()


def _press_and_wait_next(page: Any, key: str, before: int) -> int | None:
    """Press a key and wait until another item (or the end-of-batch note) is shown."""
    page.keyboard.press(key)
    return wait_next(page, before)


def _outbox_size(page: Any) -> int:
    """Labels kept in the page's outbox, not yet acknowledged by the server."""
    return int(page.evaluate(OUTBOX_SIZE))


def _wait_progress(page: Any, text: str) -> None:
    """Wait until the page's progress reads ``text`` ("7 of 14")."""
    page.wait_for_function(
        f"() => document.querySelector('#progress-text')?.textContent === {text!r}",
        timeout=10_000,
    )


def _live_labels(database_url: str, item_ids: list[int]) -> dict[int, int]:
    engine = engine_for(database_url)
    try:
        with Session(engine) as db:
            rows = db.execute(
                select(Label.item_id, func.count())
                .where(Label.item_id.in_(item_ids), Label.undone_at.is_(None))
                .group_by(Label.item_id)
            ).tuples()
            return dict(rows.all())
    finally:
        engine.dispose()


def test_an_unsure_guess_is_shown_but_never_one_keystroke_from_being_accepted(
    browser: Any, stack: procs.Stack, team: dict[str, Any], database_url: str
) -> None:
    """A suggestion below 50% calibrated confidence is a hint: Enter does not take it."""
    ids = insert_items(database_url, stack.data_dir, team["project"]["id"], 2)
    insert_labeling_round(
        database_url, team["project"]["id"], ids, team["project"]["classes"], (0.2, 0.3)
    )
    page = new_page(browser)
    sign_in(page, stack.url, "ann")
    page.goto(f"{stack.url}/#/projects/{team['project']['id']}/label")
    item = shown_item(page)
    hinted = page.locator(".class-btn.hinted")
    assert hinted.count() == 1
    assert page.locator(".class-btn.suggested").count() == 0
    assert "Unsure guess" in page.locator(".suggestion-text").inner_text()
    screenshot(page, "label-unsure-guess")
    page.keyboard.press("Enter")
    page.get_by_text("No confident suggestion").wait_for()
    assert shown_item(page) == item
    assert _live_labels(database_url, ids) == {}
    # Its own key still labels it.
    key = str(CLASSES.index(hinted.get_attribute("data-class") or "") + 1)
    assert _press_and_wait_next(page, key, item) != item
    wait_sent(page)
    assert _live_labels(database_url, ids) == {item: 1}
    assert page.errors == []


def test_annotator_labels_batch_by_keys_with_undo_skip_offline_and_reload(
    browser: Any, stack: procs.Stack, team: dict[str, Any], database_url: str
) -> None:
    """Keys only: label, accept a suggestion, undo, skip, survive a network drop and a reload."""
    batch = labeling_batch(stack, database_url, team["project"], 14)
    page = new_page(browser)
    sign_in(page, stack.url, "ann")
    screenshot(page, "projects-annotator")
    # An annotator's card offers labelling only, not the engineer's project view.
    card = page.locator(f"[data-project='{team['project']['id']}']")
    card.wait_for()
    assert card.get_by_role("link", name="Label").is_visible()
    assert card.get_by_role("link", name="Open project").count() == 0
    card.get_by_role("link", name="Label").click()

    expected: dict[int, str] = {}
    item = shown_item(page)
    assert page.locator("#progress-text").inner_text() == "0 of 14"
    # The proxy's suggestion is pre-selected with its confidence.
    suggested = page.locator(".class-btn.suggested")
    assert suggested.count() == 1
    assert "%" in suggested.locator(".conf").inner_text()
    screenshot(page, "label-single")

    # 1 -> cat.
    expected[item] = "cat"
    item = _press_and_wait_next(page, "1", item)
    # Enter accepts the suggestion.
    expected[item] = page.locator(".class-btn.suggested").get_attribute("data-class")
    item = _press_and_wait_next(page, "Enter", item)
    # 2 -> dog, then Z undoes it: the same item comes back, and B-3 labels it bird instead.
    labelled_then_undone = item
    item = _press_and_wait_next(page, "2", item)
    page.keyboard.press("z")
    page.wait_for_function(
        f"() => document.querySelector('#stage img')?.dataset.itemId === '{labelled_then_undone}'"
    )
    item = labelled_then_undone
    wait_sent(page)
    expected[item] = "bird"
    item = _press_and_wait_next(page, "3", item)
    # S skips.
    skipped = item
    item = _press_and_wait_next(page, "s", item)
    assert item != skipped

    # The network drops: labels go on, wait in the outbox, and the page says so plainly. The
    # labels before it are acknowledged first, so the outbox holds exactly the two made offline.
    wait_sent(page)
    page.context.set_offline(True)
    for key, cls in [("1", "cat"), ("2", "dog")]:
        expected[item] = cls
        item = _press_and_wait_next(page, key, item)
    page.locator("#sync-state.offline").wait_for()
    assert "Offline" in page.locator("#sync-state").inner_text()
    assert page.locator("#banner").is_visible()
    assert _outbox_size(page) == 2
    screenshot(page, "label-offline")
    page.context.set_offline(False)
    wait_sent(page)

    # A label whose answer is lost on the way back is re-sent with the same key: stored once.
    lost = {"n": 0}

    def lose_first_answer(route: Any) -> None:
        if lost["n"] == 0 and route.request.method == "POST":
            lost["n"] += 1
            route.fetch()  # the server stores the label...
            route.abort()  # ...but the browser never hears back
        else:
            route.continue_()

    page.route("**/api/labels", lose_first_answer)
    expected[item] = "cat"
    item = _press_and_wait_next(page, "1", item)
    wait_sent(page, timeout=20_000)
    page.unroute("**/api/labels")
    assert lost["n"] == 1

    # Reload mid-batch while two labels cannot leave the browser: they survive in the outbox.
    page.route("**/api/labels", lambda route: route.abort())
    for key, cls in [("3", "bird"), ("2", "dog")]:
        expected[item] = cls
        item = _press_and_wait_next(page, key, item)
    assert _outbox_size(page) == 2
    page.unroute("**/api/labels")
    page.reload()
    wait_sent(page)
    # The items leased before the reload come back first; none already labelled reappears.
    item = shown_item(page)
    assert item not in expected
    assert item != skipped
    # Progress after a reload: the round's labelled count from the server once the outbox is
    # empty (the two labels sent from it are counted once, whichever answer came first).
    _wait_progress(page, f"{len(expected)} of 14")

    # The rest by keys only, until the page says the batch holds nothing more for this user.
    keys = ["1", "2", "3"]
    n = 0
    while item is not None:
        assert item not in expected, "an item came back after it was labelled"
        expected[item] = CLASSES[n % 3]
        item = _press_and_wait_next(page, keys[n % 3], item)
        n += 1
    wait_sent(page)
    state = page.locator("#batch-state")
    state.wait_for()
    assert "You skipped 1" in state.inner_text()
    _wait_progress(page, f"{len(expected)} of 14")
    assert f"{len(expected)} of 14 are labelled" in state.inner_text()
    screenshot(page, "label-batch-held")

    # Nothing lost, nothing doubled: every label the user made is the item's only live label.
    assert set(expected) == set(batch.item_ids) - {skipped}
    assert current_labels(database_url, batch.item_ids) == {**expected, skipped: None}
    assert _live_labels(database_url, batch.item_ids) == dict.fromkeys(expected, 1)
    assert page.errors == []


def test_grid_mode_labels_a_selection_with_one_key(
    browser: Any, stack: procs.Stack, team: dict[str, Any], database_url: str
) -> None:
    """In the grid, click and shift-click select a run of images and one key labels them all."""
    batch = labeling_batch(stack, database_url, team["project"], 12)
    page = new_page(browser)
    sign_in(page, stack.url, "ann")
    page.goto(f"{stack.url}/#/projects/{team['project']['id']}/label")
    shown_item(page)
    page.keyboard.press("g")
    tiles = page.locator("#label-grid .tile")
    page.wait_for_function("() => document.querySelectorAll('#label-grid .tile').length === 12")
    ids = [int(tiles.nth(i).get_attribute("data-item-id")) for i in range(4)]
    tiles.nth(0).click()
    tiles.nth(3).click(modifiers=["Shift"])
    assert page.locator("#label-grid .tile[aria-selected='true']").count() == 4
    screenshot(page, "label-grid")
    page.keyboard.press("2")
    page.wait_for_function("() => document.querySelectorAll('#label-grid .tile').length === 8")
    wait_sent(page)
    assert current_labels(database_url, ids) == dict.fromkeys(ids, "dog")
    assert page.locator("#progress-text").inner_text() == "4 of 12"
    # Z undoes the whole act: the four come back, selected.
    page.keyboard.press("z")
    page.wait_for_function("() => document.querySelectorAll('#label-grid .tile').length === 12")
    page.wait_for_function(
        "() => document.querySelectorAll('#label-grid .tile[aria-selected=\"true\"]').length === 4"
    )
    procs.wait_for(
        lambda: current_labels(database_url, ids) == dict.fromkeys(ids), 10, "undo did not reach"
    )
    # Ctrl+A, Enter: every tile takes its own suggestion; the batch is then done.
    page.keyboard.press("Control+a")
    page.keyboard.press("Enter")
    page.locator("#batch-state[data-state='done']").wait_for()
    wait_sent(page)
    screenshot(page, "label-batch-done")
    labels = current_labels(database_url, batch.item_ids)
    assert all(labels[i] in CLASSES for i in batch.item_ids)
    assert page.errors == []


def test_two_annotators_never_see_the_same_item(
    browser: Any, stack: procs.Stack, team: dict[str, Any], database_url: str
) -> None:
    """Two annotators in two browsers label one batch between them with no item shown twice."""
    batch = labeling_batch(stack, database_url, team["project"], 24)
    pages = [new_page(browser), new_page(browser)]
    for page, user in zip(pages, ["ann", "ann2"], strict=True):
        sign_in(page, stack.url, user)
        page.goto(f"{stack.url}/#/projects/{team['project']['id']}/label")
    seen: list[list[int]] = [[], []]
    current: list[int | None] = [shown_item(p) for p in pages]
    for i in range(2):
        seen[i].append(current[i])  # type: ignore[arg-type]
    turn = 0
    while any(c is not None for c in current):
        i = turn % 2
        turn += 1
        before = current[i]
        if before is None:
            continue
        current[i] = _press_and_wait_next(pages[i], "1", before)
        if current[i] is not None:
            seen[i].append(current[i])  # type: ignore[arg-type]
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(batch.item_ids)
    for page in pages:
        wait_sent(page)
    assert _live_labels(database_url, batch.item_ids) == dict.fromkeys(batch.item_ids, 1)
    pages[0].reload()
    pages[0].locator("#batch-state[data-state='done']").wait_for()
    screenshot(pages[0], "label-batch-done-two")


def _zip_with_a_corrupt_file(n: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(n):
            z.writestr(f"pool/img_{i:03d}.png", digit_png(1000 + i))
        z.writestr("pool/broken.png", b"\x89PNG\r\n\x1a\nthis is not an image at all")
    return buf.getvalue()


def _labelled_zip(seed: int, per_class: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for c, name in enumerate(CLASSES):
            for i in range(per_class):
                z.writestr(f"{name}/{i:03d}.png", digit_png(seed + 100 * c + i))
    return buf.getvalue()


def _import(api: Api, project_id: int, data: bytes, split: str) -> None:
    """Upload a zip labelled by folder names through the API and wait for its import job."""
    job = api(
        "POST",
        f"/api/projects/{project_id}/items",
        files={"file": ("labelled.zip", data, "application/zip")},
        data={"split": split, "labels_from_folders": "true"},
    )
    procs.wait_for(
        lambda: api("GET", f"/api/jobs/{job['id']}")["status"] == "succeeded",
        90,
        f"import job {job['id']} did not succeed",
    )


def test_engineer_uploads_a_zip_and_runs_a_round(
    browser: Any, tmp_path: Path, stack: procs.Stack, team: dict[str, Any]
) -> None:
    """Upload a zip with a corrupt file, read the report, start a round, watch it reach a batch."""
    stack.worker()
    # Labelled images in the pool and the test split, so the round trains and measures a proxy.
    pid = team["project"]["id"]
    _import(team["eng"], pid, _labelled_zip(5000, 3), "pool")
    _import(team["eng"], pid, _labelled_zip(7000, 4), "test")
    zpath = tmp_path / "images.zip"
    zpath.write_bytes(_zip_with_a_corrupt_file(30))
    page = new_page(browser)
    # The project view's reads, to check it never pages through the pool (its counts come
    # from the server in one answer, whatever the pool's size).
    reads: list[str] = []
    page.on("request", lambda req: reads.append(req.url) if req.method == "GET" else None)
    sign_in(page, stack.url, "eng")
    screenshot(page, "projects-engineer")
    page.locator(f"[data-project='{team['project']['id']}']").get_by_role(
        "link", name="Open project"
    ).click()
    page.get_by_role("heading", name="Upload images").wait_for()
    page.get_by_label("Images or a .zip").set_input_files(str(zpath))
    page.get_by_role("button", name="Upload").click()
    report = page.locator("#import-report")
    report.wait_for(timeout=90_000)
    assert "Added 30, duplicates 0, rejected 1." in report.inner_text()
    rejected = page.locator("#rejected tbody tr")
    assert rejected.count() == 1
    assert "broken.png" in rejected.first.inner_text()
    assert page.locator("[data-count='items'] b").inner_text() == str(30 + 9 + 12)
    # Labelled per class (pool + test), then the pool and the test split apart, in class order.
    rows = page.locator("#class-balance tbody tr")
    assert [rows.nth(i).inner_text().split() for i in range(rows.count())] == [
        ["cat", "7", "3", "4"],
        ["dog", "7", "3", "4"],
        ["bird", "7", "3", "4"],
    ]
    assert (
        "Unlabelled: 30 in the pool, 0 in the test split."
        in page.locator("#class-balance").inner_text()
    )
    screenshot(page, "project-import-report")

    page.get_by_label("Strategy").select_option("random")
    page.get_by_label("Batch size").fill("8")
    page.get_by_label("Proxy").select_option("tiny_cnn")
    page.get_by_label("Epochs").fill("1")
    page.get_by_role("button", name="Start round").click()
    row = page.locator("#rounds tbody tr[data-round]").first
    row.wait_for()
    page.wait_for_function(
        "() => ['queued', 'running']"
        ".includes(document.querySelector('#rounds tr[data-round]')?.dataset.status)"
    )
    screenshot(page, "project-round-started")
    # The events stream carries it to its batch; the batch then shows as thumbnails with scores.
    page.wait_for_function(
        "() => document.querySelector('#rounds tr[data-round]')?.dataset.status === 'labeling'",
        timeout=180_000,
    )
    page.locator("#batch .thumb").first.wait_for()
    assert page.locator("#batch .thumb").count() == 8
    # The proxy trained on the 9 labelled pool items and was measured on the 12 test items.
    assert row.locator("td").nth(6).inner_text() == "9"
    page.locator("#learning-curve .uplot").wait_for()
    # One line per strategy and proxy the rounds used.
    curve = page.locator("#learning-curve").get_attribute("aria-label") or ""
    assert "random (tiny_cnn): 9 labels" in curve
    screenshot(page, "project-round-batch")
    assert page.errors == []
    assert [u for u in reads if f"/api/projects/{pid}/items" in u] == []


def _failed_job(database_url: str, project_id: int) -> int:
    engine = engine_for(database_url)
    try:
        with Session(engine) as db, db.begin():
            job = Job(
                kind="import",
                status="failed",
                stage="reading",
                progress=0.4,
                project_id=project_id,
                params={},
                error="Traceback (most recent call last):\nOSError: the spooled upload is gone",
                attempts=1,
            )
            db.add(job)
            db.flush()
            return job.id
    finally:
        engine.dispose()


def test_admin_reads_a_failed_jobs_error_and_retries_it(
    browser: Any, stack: procs.Stack, team: dict[str, Any], database_url: str
) -> None:
    """The monitor shows a failed job's error; Retry sends it again."""
    job_id = _failed_job(database_url, team["project"]["id"])
    page = new_page(browser)
    sign_in(page, stack.url, *ADMIN)
    page.get_by_role("link", name="Monitor").click()
    row = page.locator(f"#jobs tr[data-job='{job_id}']")
    row.wait_for()
    assert row.get_attribute("data-status") == "failed"
    error = page.locator(f"tr[data-job-error='{job_id}']")
    assert "the spooled upload is gone" in error.inner_text()
    page.locator(f"details[data-job='{job_id}'] summary").click()
    assert "Traceback" in page.locator(f"details[data-job='{job_id}'] pre").inner_text()
    assert page.locator("#users tr[data-user='ann']").count() == 1
    screenshot(page, "admin-monitor")
    row.get_by_role("button", name=f"Retry job {job_id}").click()
    page.wait_for_function(
        f"() => document.querySelector(\"#jobs tr[data-job='{job_id}']\")"
        "?.dataset.status !== 'failed'"
    )
    engine = engine_for(database_url)
    try:
        with Session(engine) as db:
            job = db.get(Job, job_id)
            assert job is not None
            assert job.status != "failed" or job.attempts > 1
    finally:
        engine.dispose()
    assert page.errors == []


def test_annotator_cannot_open_the_monitor(
    browser: Any, stack: procs.Stack, team: dict[str, Any]
) -> None:
    """No Monitor link for an annotator; the page refuses, and so does the API behind it."""
    page = new_page(browser)
    sign_in(page, stack.url, "ann")
    assert not page.get_by_role("link", name="Monitor").is_visible()
    page.goto(f"{stack.url}/#/admin")
    page.locator("#forbidden").wait_for()
    assert "Admins only" in page.locator("#forbidden").inner_text()
    assert page.locator("#jobs").count() == 0
    screenshot(page, "admin-forbidden")
    assert page.request.get(f"{stack.url}/api/jobs").status == 403
    assert page.request.get(f"{stack.url}/api/users").status == 403


def test_pages_fit_a_tablet_width(
    browser: Any, stack: procs.Stack, team: dict[str, Any], database_url: str
) -> None:
    """At 800 px wide nothing overflows sideways, and the class buttons sit below the image."""
    labeling_batch(stack, database_url, team["project"], 6)
    page = new_page(browser, width=800, height=1000)
    sign_in(page, stack.url, "eng")
    pid = team["project"]["id"]
    for name, hash_ in [
        ("tablet-project", f"#/projects/{pid}"),
        ("tablet-label", f"#/projects/{pid}/label"),
    ]:
        page.goto(f"{stack.url}/{hash_}")
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(300)
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name} is {overflow}px wider than the window"
        screenshot(page, name)
    stage = page.locator("#stage").bounding_box()
    first_class = page.locator(".class-btn").first.bounding_box()
    assert first_class["y"] > stage["y"] + stage["height"] - 1
    # Keyboard reachable: Tab lands on a control with a visible focus ring.
    page.keyboard.press("Tab")
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"


def test_api_docs_render_from_the_server_under_its_csp(browser: Any, stack: procs.Stack) -> None:
    """/docs draws Swagger UI from the vendored copy, with no request leaving the server."""
    page = new_page(browser)
    foreign: list[str] = []
    page.on(
        "request",
        lambda r: (
            None
            if r.url.startswith(stack.url) or r.url.startswith("data:")
            else foreign.append(r.url)
        ),
    )
    page.goto(f"{stack.url}/docs")
    page.locator(".swagger-ui .info .title").wait_for()
    assert "SVP Label" in page.locator(".swagger-ui .info .title").inner_text()
    page.locator(".opblock").first.wait_for()
    # Opening an operation draws its parameters, schemas and examples: no blocked style either.
    page.locator(".opblock-summary").first.click()
    page.locator(".opblock-body").first.wait_for()
    page.locator(".try-out__btn").first.click()
    page.locator(".execute").first.wait_for()
    assert foreign == []
    assert page.errors == []
