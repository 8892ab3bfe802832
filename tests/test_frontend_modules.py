"""Which way the front end's modules go: the labelling modules call lower layers only, and the
project view's sections know none of each other. Read from the source (no browser needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.database_free

JS = Path(__file__).resolve().parents[1] / "frontend" / "js"
IMPORT = re.compile(r'^import\s[^;]*?from\s+"\./([\w-]+)\.js";', re.M | re.S)

# frontend/js/label/: a module may import, or be handed and call, only those of a lower layer.
LABEL_LAYERS = {"item": 0, "suggest": 0, "keymap": 0, "queue": 1, "acts": 2, "view": 3, "keys": 4}
# What each module is handed by views/label.js, by the name it calls it under.
HANDED = {"queue": "queue", "acts": "acts", "view": "view"}


def _sibling_imports(path: Path) -> set[str]:
    return set(IMPORT.findall(path.read_text()))


def _code(path: Path) -> str:
    """The source without its comments, so a header that names another module is no call."""
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", path.read_text(), flags=re.S)


def test_every_labelling_module_has_a_layer() -> None:
    assert {p.stem for p in (JS / "label").glob("*.js")} == set(LABEL_LAYERS)


@pytest.mark.parametrize("name", sorted(LABEL_LAYERS))
def test_a_labelling_module_reaches_only_lower_layers(name: str) -> None:
    path = JS / "label" / f"{name}.js"
    layer = LABEL_LAYERS[name]
    upward = {m for m in _sibling_imports(path) if LABEL_LAYERS[m] >= layer}
    assert upward == set(), f"{name}.js imports {upward}, not below it"
    code = _code(path)
    for module, handle in HANDED.items():
        # ``state.queue`` is data, not the module: only a bare ``queue.x`` is a call.
        if module != name and LABEL_LAYERS[module] >= layer:
            assert not re.search(rf"(?<![.\w]){handle}\.\w+", code), f"{name}.js calls {handle}"
    # The shared object every module reached the others through is gone.
    assert not re.search(r"\bpage\.(view|acts|queue|keys)\b", code)
    assert "Depends on" in path.read_text().split("\n\n")[0], f"{name}.js: say it in the header"


def test_project_sections_know_none_of_each_other() -> None:
    """Only index.js wires the sections; points.js (what the curve plots) is shared."""
    for path in (JS / "project").glob("*.js"):
        if path.stem == "index":
            continue
        assert _sibling_imports(path) <= {"points"}, f"{path.name} imports a sibling section"
