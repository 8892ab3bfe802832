"""Accessibility in a real browser: axe-core finds nothing on any page, and a keyboard-only
annotator and engineer can do every task, with keys acting only where they are meant to.

axe-core is vendored (frontend/vendor/axe-core) and evaluated into the page by these tests only.
Screenshots go to test-output/screenshots/.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.jobs.models import Job
from app.rounds.models import Round
from tests import procs
from tests.browser_support import (
    ADMIN,
    CLASSES,
    PASSWORD,
    axe_violations,
    browser_marks,
    current_labels,
    engine_for,
    focus_problems,
    insert_items,
    labeling_batch,
    new_page,
    screenshot,
    shown_item,
    wait_next,
    wait_sent,
)

pytestmark = browser_marks()


def _focused(page: Any) -> str:
    """What has focus: tag, id, and its name or text."""
    return str(
        page.evaluate(
            "() => { const e = document.activeElement;"
            " return `${e.tagName.toLowerCase()}#${e.id} `"
            " + (e.getAttribute('aria-label') || e.textContent || '').trim(); }"
        )
    )


def _tab_to(page: Any, selector: str, *, limit: int = 80, back: bool = False) -> list[str]:
    """Press Tab (Shift+Tab with ``back``) until ``selector`` has focus; checks at every stop
    that the focus ring is visible and uncovered. Returns the problems seen on the way."""
    problems: list[str] = []
    for _ in range(limit):
        page.keyboard.press("Shift+Tab" if back else "Tab")
        problems += focus_problems(page)
        if page.evaluate("(s) => document.activeElement.matches(s)", selector):
            return problems
    raise AssertionError(f"{selector} never took focus by Tab; last: {_focused(page)}")


def _sign_in_by_keyboard(page: Any, base_url: str, username: str, password: str) -> None:
    """Sign in with the keyboard alone: the username field has focus, Tab, Enter."""
    page.goto(f"{base_url}/#/login")
    page.locator("#username:focus").wait_for()
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(password)
    page.keyboard.press("Enter")
    page.wait_for_url("**/#/projects")
    page.wait_for_selector("[data-project], .notice")


def _audit(page: Any, name: str, found: dict[str, list[str]]) -> None:
    """Run axe on the page as it is and note what it finds under the page's name."""
    screenshot(page, f"a11y-{name}")
    found[name] = [
        f"{v['id']} ({v['impact']}, {len(v['nodes'])} nodes): {v['help']} at {v['nodes'][:3]}"
        for v in axe_violations(page)
    ]


def _measured_round(database_url: str, round_id: int) -> None:
    """Give a round the metrics a trained proxy leaves, so the learning curve draws, and the
    monitor a succeeded and a failed job."""
    engine = engine_for(database_url)
    try:
        with Session(engine) as db, db.begin():
            db.execute(
                update(Round)
                .where(Round.id == round_id)
                .values(metrics={"labeled": 6, "proxy_test_accuracy": 0.5})
            )
            # The monitor's pills in each colour: green for a success, red for a failure.
            db.add(Job(kind="import", status="succeeded", progress=1.0, params={}, attempts=1))
            db.add(
                Job(
                    kind="import",
                    status="failed",
                    stage="reading",
                    progress=0.4,
                    params={},
                    error="Traceback (most recent call last):\nOSError: the upload is gone",
                    attempts=1,
                )
            )
    finally:
        engine.dispose()


def test_axe_finds_no_violation_on_any_page(
    browser: Any, stack: procs.Stack, team: dict[str, Any], database_url: str
) -> None:
    """Sign-in, projects, project, labelling one by one and as a grid, monitor, a refusal."""
    pid = team["project"]["id"]
    labelled = insert_items(database_url, stack.data_dir, pid, 6, seed=3)
    for i, item_id in enumerate(labelled):
        team["eng"](
            "POST",
            "/api/labels",
            json={"item_id": item_id, "label": CLASSES[i % 3], "key": f"k{i}"},
        )
    batch = labeling_batch(stack, database_url, team["project"], 8)
    _measured_round(database_url, batch.round_id)
    found: dict[str, list[str]] = {}

    anonymous = new_page(browser)
    anonymous.goto(f"{stack.url}/#/login")
    anonymous.locator("#username").wait_for()
    anonymous.get_by_label("Username").fill("nobody")
    anonymous.get_by_label("Password").fill("wrong password")
    anonymous.get_by_role("button", name="Sign in").click()
    anonymous.locator("#login-error:not(:empty)").wait_for()
    _audit(anonymous, "login", found)

    page = new_page(browser)
    _sign_in_by_keyboard(page, stack.url, "eng", PASSWORD)
    _audit(page, "projects", found)

    page.goto(f"{stack.url}/#/projects/{pid}")
    page.locator("#class-balance > *").first.wait_for()
    page.locator("#batch .thumb").first.wait_for()
    page.locator("#learning-curve .uplot").wait_for()
    page.locator("#members tbody tr").first.wait_for()
    _audit(page, "project", found)

    page.goto(f"{stack.url}/#/projects/{pid}/label")
    shown_item(page)
    _audit(page, "label-single", found)
    page.keyboard.press("g")
    page.locator("#label-grid .tile").first.wait_for()
    page.locator("#label-grid .tile").first.click()
    _audit(page, "label-grid", found)
    page.keyboard.press("g")

    admin = new_page(browser)
    _sign_in_by_keyboard(admin, stack.url, *ADMIN)
    admin.goto(f"{stack.url}/#/admin")
    admin.locator("#jobs tr[data-job]").first.wait_for()
    admin.locator("#users tr[data-user]").first.wait_for()
    _audit(admin, "admin", found)

    annotator = new_page(browser)
    _sign_in_by_keyboard(annotator, stack.url, "ann", PASSWORD)
    annotator.goto(f"{stack.url}/#/admin")
    annotator.locator("#forbidden").wait_for()
    _audit(annotator, "admin-forbidden", found)
    assert {name: v for name, v in found.items() if v} == {}
    assert len(found) == 7
    for p in (anonymous, page, admin, annotator):
        assert p.errors == []
        # axe came from the test, never from the app: no page asked the server for it.
        assert p.axe_requests == []


def test_enter_on_a_link_in_the_labelling_view_follows_it_and_labels_nothing(
    browser: Any, stack: procs.Stack, team: dict[str, Any], database_url: str
) -> None:
    """The skip link moves focus to the content and keeps the page; the top bar's Projects link
    goes to the projects: neither labels the image on screen with its suggestion."""
    batch = labeling_batch(stack, database_url, team["project"], 4)
    page = new_page(browser)
    _sign_in_by_keyboard(page, stack.url, "ann", PASSWORD)
    url = f"{stack.url}/#/projects/{team['project']['id']}/label"
    page.goto(url)
    item = shown_item(page)
    # Back from the page to the first stop of the document: the skip link.
    _tab_to(page, ".skip-link", back=True)
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.activeElement.id === 'main'")
    assert page.url == url
    assert shown_item(page) == item
    # The top bar's Projects link: Enter follows it.
    _tab_to(page, "nav a[data-nav='projects']")
    page.keyboard.press("Enter")
    page.wait_for_url("**/#/projects")
    page.get_by_role("heading", name="Projects").wait_for()
    page.wait_for_timeout(500)
    assert current_labels(database_url, batch.item_ids) == dict.fromkeys(batch.item_ids)
    assert page.errors == []


def test_single_key_shortcuts_can_be_turned_off_and_stay_off(
    browser: Any, stack: procs.Stack, team: dict[str, Any], database_url: str
) -> None:
    """WCAG 2.1.4: a visible switch turns the single-character keys off (remembered in this
    browser); Enter, the class buttons and the act buttons still do everything."""
    batch = labeling_batch(stack, database_url, team["project"], 6)
    page = new_page(browser)
    _sign_in_by_keyboard(page, stack.url, "ann", PASSWORD)
    page.goto(f"{stack.url}/#/projects/{team['project']['id']}/label")
    item = shown_item(page)
    box = page.get_by_label("Single-key shortcuts")
    assert box.is_visible()
    assert box.is_checked()
    _tab_to(page, "#single-key-shortcuts")
    page.keyboard.press("Space")
    assert not box.is_checked()
    # A digit on the switch itself, then with focus back on the page: neither labels.
    page.keyboard.press("1")
    page.keyboard.press("Escape")
    page.wait_for_function("() => document.activeElement.id === 'main'")
    for key in ("1", "s", "g", "z"):
        page.keyboard.press(key)
    page.wait_for_timeout(400)
    assert shown_item(page) == item
    assert page.locator("#label-grid").count() == 0
    assert "shortcuts are off" in page.locator("#key-help").inner_text()
    page.reload()
    item = shown_item(page)
    assert not page.get_by_label("Single-key shortcuts").is_checked()
    page.keyboard.press("2")
    page.wait_for_timeout(300)
    assert shown_item(page) == item
    # Enter is no character key: it still accepts the suggestion.
    suggested = page.locator(".class-btn.suggested").get_attribute("data-class")
    page.keyboard.press("Enter")
    first = item
    item = wait_next(page, item)  # type: ignore[assignment]
    # The buttons by keyboard: a class, skip, undo.
    _tab_to(page, ".class-btn[data-class='bird']")
    page.keyboard.press("Enter")
    second = item
    item = wait_next(page, item)  # type: ignore[assignment]
    _tab_to(page, "[data-act='skip']")
    page.keyboard.press("Enter")
    item = wait_next(page, item)  # type: ignore[assignment]
    _tab_to(page, "[data-act='undo']", back=True)
    page.keyboard.press("Enter")
    page.wait_for_function(
        f"() => document.querySelector('#stage img')?.dataset.itemId === '{second}'"
    )
    wait_sent(page)
    page.wait_for_timeout(300)
    labels = current_labels(database_url, batch.item_ids)
    assert labels[first] == suggested
    assert labels[second] is None
    screenshot(page, "a11y-shortcuts-off")
    assert page.errors == []


def test_a_keyboard_only_annotator_labels_a_batch(
    browser: Any, stack: procs.Stack, team: dict[str, Any], database_url: str
) -> None:
    """Sign in, open the project, label by keys and by buttons, use the grid, never a mouse;
    every control on the way shows a focus ring no bar covers."""
    batch = labeling_batch(stack, database_url, team["project"], 12)
    page = new_page(browser)
    _sign_in_by_keyboard(page, stack.url, "ann", PASSWORD)
    problems = _tab_to(page, f"[data-project='{team['project']['id']}'] a[href$='/label']")
    page.keyboard.press("Enter")
    item = shown_item(page)
    expected: dict[int, str] = {}
    # A digit labels; Enter accepts the suggestion; Backspace undoes.
    expected[item] = "dog"
    page.keyboard.press("2")
    item = wait_next(page, item)  # type: ignore[assignment]
    expected[item] = page.locator(".class-btn.suggested").get_attribute("data-class") or ""
    page.keyboard.press("Enter")
    item = wait_next(page, item)  # type: ignore[assignment]
    # A class button reached by Tab, pressed with Enter: its own class, not the suggestion.
    problems += _tab_to(page, ".class-btn[data-class='bird']")
    expected[item] = "bird"
    page.keyboard.press("Enter")
    item = wait_next(page, item)  # type: ignore[assignment]
    # Keys do nothing on a button; Escape gives them back to the page.
    page.keyboard.press("1")
    page.wait_for_timeout(300)
    assert shown_item(page) == item
    page.keyboard.press("Escape")
    page.wait_for_function("() => document.activeElement.id === 'main'")
    # The grid: arrows move, Space selects, a digit labels the selection.
    page.keyboard.press("g")
    page.locator("#label-grid .tile").first.wait_for()
    problems += _tab_to(page, "#label-grid .tile")
    tiles = page.locator("#label-grid .tile")
    picked = [int(tiles.nth(i).get_attribute("data-item-id")) for i in (0, 1)]
    name = tiles.nth(0).get_attribute("aria-label") or ""
    assert "%" in name, f"a tile's name omits the confidence it shows: {name!r}"
    page.keyboard.press("Space")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Space")
    assert page.locator("#label-grid .tile[aria-selected='true']").count() == 2
    page.keyboard.press("3")
    page.wait_for_function(
        "(ids) => !ids.some((id) => document.querySelector(`.tile[data-item-id='${id}']`))",
        arg=picked,
    )
    expected.update(dict.fromkeys(picked, "bird"))
    wait_sent(page)
    labels = current_labels(database_url, batch.item_ids)
    assert {i: labels[i] for i in expected} == expected
    screenshot(page, "a11y-keyboard-annotator-grid")
    assert problems == []
    assert page.errors == []


def test_a_keyboard_only_engineer_runs_the_project(
    browser: Any, stack: procs.Stack, team: dict[str, Any], database_url: str
) -> None:
    """Open the project, start a round, cancel it, add a member, reach the upload and the
    exports, by keyboard only; every focused control, down the page and back up, keeps a
    visible ring the sticky bar does not cover."""
    pid = team["project"]["id"]
    insert_items(database_url, stack.data_dir, pid, 10)
    page = new_page(browser, height=700)
    _sign_in_by_keyboard(page, stack.url, "eng", PASSWORD)
    problems = _tab_to(page, f"[data-project='{pid}'] a[href='#/projects/{pid}']")
    page.keyboard.press("Enter")
    page.locator("#round-form").wait_for()
    page.locator("#members-table tbody tr").first.wait_for()
    # The skip link, from far down the page: the content it moves to starts below the bar.
    page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
    problems += _tab_to(page, ".skip-link", back=True)
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.activeElement.id === 'main'")
    assert page.evaluate(
        """() => {
            const h = document.querySelector('main h1').getBoundingClientRect();
            return h.top >= document.getElementById('topbar').getBoundingClientRect().bottom;
        }"""
    ), "the skip link scrolled the page's heading under the sticky bar"
    # Down the whole page and back up: every stop is visible and ringed.
    problems += _tab_to(page, "#member-form button")
    problems += _tab_to(page, "#upload-file", back=True)
    # A field the page was scrolled to put just under the bar: Tab to it brings it out (the
    # browser scrolls only a field it deems hidden, and the bar's height does not count as such
    # without scroll-padding).
    page.locator("#round-batch").focus()
    page.evaluate(
        "() => window.scrollBy(0,"
        " document.getElementById('round-strategy').getBoundingClientRect().top - 12)"
    )
    page.keyboard.press("Shift+Tab")
    assert page.evaluate("() => document.activeElement.id") == "round-strategy"
    problems += focus_problems(page)
    # Start a round: choose the strategy by typing its first letter, batch size, Enter.
    page.keyboard.press("r")
    assert page.locator("#round-strategy").input_value() == "random"
    page.keyboard.press("Tab")
    page.keyboard.press("Control+a")
    page.keyboard.type("4")
    page.keyboard.press("Enter")
    page.locator("#rounds tr[data-round]").first.wait_for()
    # Cancel it from its row.
    page.once("dialog", lambda d: d.accept())
    problems += _tab_to(page, "#rounds button[aria-label='Cancel round 1']")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => ['canceled', 'failed'].includes("
        "document.querySelector('#rounds tr[data-round]')?.dataset.status)",
        timeout=30_000,
    )
    # Add a member: type the name, Tab to the role, pick it by letter, Tab to the button, Enter.
    problems += _tab_to(page, "#member-name")
    page.keyboard.type("newcomer")
    page.keyboard.press("Tab")
    page.keyboard.press("e")
    problems += _tab_to(page, "#member-form button")
    page.keyboard.press("Enter")
    page.locator("#members-table tr[data-member='newcomer']").wait_for()
    assert "engineer" in page.locator("#members-table tr[data-member='newcomer']").inner_text()
    # The exports are links reachable by Tab.
    problems += _tab_to(page, "#export a[data-format='csv']", back=True)
    screenshot(page, "a11y-keyboard-engineer")
    assert problems == []
    assert page.errors == []
