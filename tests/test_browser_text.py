"""A text project in a real browser (Debian's chromium) against real ``svplabel`` processes.

The labelling view shows a text item's text as text (never markup), at a readable measure, a long
one scrolling inside its panel; the keys and the buttons label it as they label an image; the grid
shows the first lines; the project view takes a text upload and shows a text batch; axe finds
nothing on any of it. Screenshots go to test-output/screenshots/ (text-*.png).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from app.items.models import TEXT_MEDIA_TYPE, Item
from app.items.text_import import content_hash
from tests import procs
from tests.browser_support import (
    ADMIN,
    PASSWORD,
    Api,
    axe_violations,
    browser_marks,
    current_labels,
    engine_for,
    insert_labeling_round,
    new_page,
    screenshot,
    shown_item,
    sign_in,
    wait_next,
    wait_sent,
)

pytestmark = browser_marks()

CLASSES = ["complaint", "praise", "question"]
# Markup, a script and an event handler: shown as the characters they are, run never.
MARKUP = '<b>x</b><script>window.__pwned = 1</script> & <img src=x onerror="window.__pwned = 2">'
# Many paragraphs, far more than the stage holds: the panel scrolls, the page does not grow.
LONG = "\n\n".join(
    f"Paragraph {n}. The parcel arrived two weeks after the promised date, the box was crushed "
    "on one corner and the manual was missing, so I called the support line, waited forty "
    "minutes, and was told to write an email instead, which nobody has answered yet."
    for n in range(1, 31)
)
SHORT = [
    "Does the kettle come with a spare filter?",
    "Lovely service, the courier even carried it upstairs.",
    "The screen cracked the first week and the shop will not take it back.",
    "Can I change the delivery address after ordering?",
    "Five stars: quick, cheap and exactly as described.",
    "Why was I charged twice for one order?",
    "Great value, I bought a second one for my sister.",
]


def insert_texts(
    database_url: str, project_id: int, texts: list[str], *, split: str = "pool"
) -> list[int]:
    """Text items of the project, written as the importer writes them (in their rows)."""
    rows = [
        Item(
            project_id=project_id,
            content_hash=content_hash(text),
            name=f"reviews.csv:{i + 2}",
            media_type=TEXT_MEDIA_TYPE,
            text=text,
            text_chars=len(text),
            split=split,
        )
        for i, text in enumerate(texts)
    ]
    engine = engine_for(database_url)
    try:
        with Session(engine) as db, db.begin():
            db.add_all(rows)
            db.flush()
            return [r.id for r in rows]
    finally:
        engine.dispose()


@pytest.fixture
def reviews(stack: procs.Stack) -> Any:
    """A text project made through the API by an engineer, with an annotator in it."""
    admin = Api(stack.url, *ADMIN)
    for name, role in (("eng", "engineer"), ("ann", "annotator")):
        admin("POST", "/api/users", json={"username": name, "password": PASSWORD, "role": role})
    eng = Api(stack.url, "eng", PASSWORD)
    project = eng(
        "POST", "/api/projects", json={"name": "Reviews", "classes": CLASSES, "kind": "text"}
    )
    eng(
        "PUT",
        f"/api/projects/{project['id']}/members",
        json={"username": "ann", "role": "annotator"},
    )
    assert project["kind"] == "text"
    yield {"project": project, "eng": eng}
    eng.close()
    admin.close()


# Characters per line of the panel at its font: its content width over the width of a "0" (the
# `ch` unit), so the measure is read as a reader meets it.
MEASURE = """(el) => {
    const probe = document.createElement("span");
    probe.textContent = "0".repeat(100);
    probe.style.whiteSpace = "nowrap";
    el.append(probe);
    const ch = probe.getBoundingClientRect().width / 100;
    probe.remove();
    const s = getComputedStyle(el);
    const content = el.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight);
    return content / ch;
}"""


def test_annotator_labels_texts_by_key_and_click_with_markup_shown_as_text(
    browser: Any, stack: procs.Stack, reviews: dict[str, Any], database_url: str
) -> None:
    """One by one: markup is text, a long text scrolls in its panel at a readable measure, keys
    (also with the panel focused) and clicks label, and the grid labels a selection by key."""
    pid = reviews["project"]["id"]
    ids = insert_texts(database_url, pid, [MARKUP, LONG, *SHORT])
    insert_labeling_round(database_url, pid, ids, CLASSES, (0.6, 0.9))
    page = new_page(browser)
    sign_in(page, stack.url, "ann")
    page.goto(f"{stack.url}/#/projects/{pid}/label")

    # The markup item, first in rank: its characters, no element made from them, nothing run.
    first = shown_item(page)
    assert first == ids[0]
    panel = page.locator("#stage .text-item")
    assert panel.evaluate("(el) => el.textContent") == MARKUP
    assert panel.evaluate("(el) => el.children.length") == 0
    assert page.locator("#stage b, #stage script, #stage img").count() == 0
    assert page.evaluate("() => window.__pwned") is None
    # The suggestion shows as it does for an image: on its class button and in the caption.
    suggested = page.locator(".class-btn.suggested")
    assert suggested.count() == 1
    assert suggested.get_attribute("data-class") == CLASSES[0]
    assert "Suggestion: complaint" in page.locator(".suggestion-text").inner_text()
    screenshot(page, "text-label-markup")
    page.keyboard.press("2")
    second = wait_next(page, first)
    assert second == ids[1]

    # The long text: the panel scrolls, the stage keeps its height, the measure stays readable.
    stage_height = page.locator("#stage").evaluate("(el) => el.getBoundingClientRect().height")
    sizes = panel.evaluate("(el) => [el.scrollHeight, el.clientHeight]")
    assert sizes[0] > 3 * sizes[1], sizes
    assert page.evaluate("() => document.documentElement.scrollHeight <= innerHeight + 1")
    assert 55 <= panel.evaluate(MEASURE) <= 75
    assert panel.evaluate("(el) => el.textContent") == LONG
    # Tab reaches the panel (a scrolling region a keyboard user can read), the arrows scroll it,
    # and the class keys still act there.
    panel.focus()
    page.keyboard.press("PageDown")
    page.keyboard.press("ArrowDown")
    page.wait_for_function("() => document.querySelector('#stage .text-item').scrollTop > 100")
    screenshot(page, "text-label-long")
    assert page.locator("#stage").evaluate("(el) => el.getBoundingClientRect().height") == (
        stage_height
    )
    page.keyboard.press("3")
    third = wait_next(page, second)
    assert third == ids[2]
    # Whoever read the last text with the keyboard reads on in the next one.
    assert page.evaluate("() => document.activeElement.classList.contains('text-item')")
    assert page.locator("#stage .text-item").evaluate("(el) => el.scrollTop") == 0

    # A click on a class button labels it too, and the keys go on working after it.
    page.locator(".class-btn[data-class='praise']").click()
    fourth = wait_next(page, third)
    assert fourth == ids[3]
    page.keyboard.press("Enter")  # the pre-selected suggestion
    fifth = wait_next(page, fourth)
    assert fifth == ids[4]
    wait_sent(page)
    labels = current_labels(database_url, ids[:4])
    assert labels == {ids[0]: "praise", ids[1]: "question", ids[2]: "praise", ids[3]: CLASSES[0]}

    # The grid: text tiles with their first lines, named by their first words; one key labels
    # the selection.
    page.keyboard.press("g")
    tiles = page.locator("#label-grid .tile")
    tiles.first.wait_for()
    assert page.locator("#label-grid .text-tile").count() == tiles.count() == len(ids) - 4
    assert tiles.first.locator(".text-tile").inner_text() == SHORT[2]
    assert (tiles.first.get_attribute("aria-label") or "").startswith(SHORT[2])
    assert page.locator("#label-grid").get_attribute("aria-label") == "Texts to label"
    screenshot(page, "text-label-grid")
    tiles.nth(0).click()
    tiles.nth(1).click(modifiers=["Control"])
    page.keyboard.press("1")
    page.wait_for_function(
        f"() => document.querySelectorAll('#label-grid .tile').length === {len(ids) - 6}"
    )
    wait_sent(page)
    assert current_labels(database_url, ids[4:6]) == {ids[4]: "complaint", ids[5]: "complaint"}
    assert page.errors == []


def test_axe_finds_nothing_on_the_text_views(
    browser: Any, stack: procs.Stack, reviews: dict[str, Any], database_url: str
) -> None:
    """Labelling one by one (a long text) and as a grid, the project view with a text batch,
    the project list and its form."""
    pid = reviews["project"]["id"]
    ids = insert_texts(database_url, pid, [LONG, MARKUP, *SHORT])
    insert_labeling_round(database_url, pid, ids, CLASSES, (0.2, 0.9))
    found: dict[str, list[str]] = {}

    def audit(page: Any, name: str) -> None:
        screenshot(page, f"a11y-text-{name}")
        found[name] = [
            f"{v['id']} ({v['impact']}): {v['help']} at {v['nodes'][:3]}"
            for v in axe_violations(page)
        ]

    page = new_page(browser)
    sign_in(page, stack.url, "eng")
    page.locator("#new-kind").wait_for()
    assert page.locator("[data-project]").inner_text().count("Texts · 3 classes") == 1
    audit(page, "projects")
    page.goto(f"{stack.url}/#/projects/{pid}/label")
    shown_item(page)
    audit(page, "label")
    page.keyboard.press("g")
    page.locator("#label-grid .text-tile").first.wait_for()
    audit(page, "grid")
    page.goto(f"{stack.url}/#/projects/{pid}")
    page.locator("#batch .text-thumb").first.wait_for()
    assert page.locator("#batch .text-thumb").count() == len(ids)
    assert page.locator("#batch img").count() == 0
    audit(page, "project")
    assert found == {name: [] for name in found}
    assert page.errors == []


def test_engineer_makes_a_text_project_and_uploads_a_csv(
    browser: Any, tmp_path: Path, stack: procs.Stack
) -> None:
    """The form's kind makes a text project; its upload takes a CSV, says the formats, and the
    import's report names the rows it refused."""
    stack.worker()
    admin = Api(stack.url, *ADMIN)
    admin("POST", "/api/users", json={"username": "eng", "password": PASSWORD, "role": "engineer"})
    admin.close()
    csv = tmp_path / "reviews.csv"
    kinds = ["question", "praise", "complaint"] * 3
    rows = [f'"{t}",{c}' for t, c in zip(SHORT, kinds, strict=False)]
    # An empty text and an unknown class: refused alone, each with its reason.
    csv.write_text("text,label\n" + "\n".join([*rows, '"",praise', '"Fine.",spam']) + "\n")

    page = new_page(browser)
    sign_in(page, stack.url, "eng")
    page.get_by_label("Name").fill("Support tickets")
    page.get_by_label("What is labelled").select_option("text")
    page.get_by_label("Classes").fill("complaint, praise, question")
    page.get_by_role("button", name="Create project").click()
    page.get_by_role("heading", name="Upload texts").wait_for()
    assert page.locator("#project-kind").text_content() == "texts"
    picker = page.get_by_label("Texts: .csv, .jsonl, .txt or a .zip of them")
    assert picker.get_attribute("accept").split(",")[:4] == [".csv", ".jsonl", ".txt", ".zip"]
    assert "header row with a text column" in page.locator("#upload-formats").inner_text()
    # The proxies offered are the ones that train on text.
    proxies = page.locator("#round-proxy option")
    assert sorted(proxies.nth(i).get_attribute("value") for i in range(proxies.count())) == [
        "fasttext",
        "linear",
    ]
    # fastText's epochs are its own setting (many cheap passes), not the image proxies'.
    page.get_by_label("Proxy").select_option("fasttext")
    assert page.get_by_label("Epochs").input_value() == "50"
    picker.set_input_files(str(csv))
    page.get_by_role("button", name="Upload").click()
    report = page.locator("#import-report")
    report.wait_for(timeout=90_000)
    # Their labels came from the CSV's label column, not from folder names.
    assert "Added 7, duplicates 0, rejected 2. 7 came with their labels." in report.inner_text()
    assert page.locator("#rejected tbody tr").count() == 2
    assert page.locator("[data-count='items'] b").inner_text() == "7"
    screenshot(page, "text-project-import")
    assert page.errors == []
