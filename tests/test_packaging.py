"""The package declares what it imports, nothing more, and the layout rules hold."""

import ast
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "napari_featup"
# import name -> distribution name, where they differ
DIST = {
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "yaml": "pyyaml",
    "open_clip": "open-clip-torch",
}
# imported by the Qt-only code, provided by napari itself
PROVIDED_BY_NAPARI = {"qtpy"}


def _imports() -> set[str]:
    names = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    return {n for n in names if n not in stdlib and n != "napari_featup"}


def _declared() -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = set()
    for req in meta["dependencies"]:
        name = req.split(";")[0].split("[")[0]
        for sep in "<>=!~ ":
            name = name.split(sep)[0]
        out.add(name.strip().lower().replace("_", "-"))
    return out


def test_dependencies_are_what_src_imports():
    used = {DIST.get(n, n).lower().replace("_", "-") for n in _imports()}
    declared = _declared()
    assert used - declared == set(), f"imported but not declared: {sorted(used - declared)}"
    unused = declared - used - {n.replace("_", "-") for n in PROVIDED_BY_NAPARI}
    assert unused == set(), f"declared but never imported: {sorted(unused)}"


def test_core_never_imports_qt_or_napari():
    qt_free = [
        p
        for p in SRC.rglob("*.py")
        if not {"_qt", "_widgets"} & set(p.relative_to(SRC).parts)
        and not p.name.startswith(("_reader", "_writer", "_sample_data", "_demo"))
    ]
    bad = []
    for path in qt_free:
        for node in ast.walk(ast.parse(path.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            bad += [
                f"{path.relative_to(SRC)}: {m}"
                for m in mods
                if m.split(".")[0] in ("qtpy", "PyQt5", "PySide2", "napari")
            ]
    assert bad == []


def test_no_module_is_too_long():
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 470
    }
    assert long == {}, f"modules over ~450 lines: {long}"


# the layers, bottom to top: a module may import its own layer and those below it
HIGHER = {"pipeline", "session", "_qt", "cli", "hub", "_reader", "_writer", "_demo"}


def _resolved_imports(path: Path) -> list[str]:
    """Absolute napari_featup module names imported by ``path``."""
    pkg = ["napari_featup", *path.relative_to(SRC).parent.parts]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append(mod)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return [m for m in out if m.startswith("napari_featup")]


def test_core_modules_never_import_the_layers_above_them():
    core = [
        p
        for p in SRC.rglob("*.py")
        if p.relative_to(SRC).parts[0] in ("upsamplers", "backbones", "text")
        or p.name in ("ops.py", "progress.py", "errors.py", "analysis.py", "field.py")
    ]
    bad = [
        f"{p.relative_to(SRC)} imports {m}"
        for p in core
        for m in _resolved_imports(p)
        if m.split(".")[1:2] and m.split(".")[1] in HIGHER
    ]
    assert bad == []
