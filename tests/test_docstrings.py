"""The public API's docstrings are numpydoc-style: a summary line, a Parameters section
(Attributes for a class) naming every parameter, and Returns (or Yields) for functions
that return something. The public API: ``napari_featup.__all__`` and the ``__all__`` of
its library subpackages (io, upsamplers, backbones)."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

PACKAGES = (
    "napari_featup",
    "napari_featup.io",
    "napari_featup.upsamplers",
    "napari_featup.backbones",
)


def _public() -> list[tuple[str, object]]:
    out, seen = [], set()
    for package in PACKAGES:
        module = importlib.import_module(package)
        for name in module.__all__:
            obj = getattr(module, name)
            if name.startswith("_") or id(obj) in seen:
                continue
            seen.add(id(obj))
            if inspect.isfunction(obj) or (inspect.isclass(obj) and not issubclass(obj, Exception)):
                out.append((f"{package}.{name}", obj))
    return out


def _section(doc: str, title: str) -> list[str] | None:
    """Lines of a numpydoc section, or None when the docstring has none."""
    m = re.search(
        rf"^{title}\n-{{{len(title)}}}\n(.*?)(?=^\S[^\n]*\n-{{3,}}\n|\Z)", doc, re.M | re.S
    )
    return m.group(1).splitlines() if m else None


def _documented(lines: list[str]) -> set[str]:
    names = set()
    for line in lines:
        if line and not line[0].isspace():  # an entry's header: "a, b : type" or "a"
            for part in line.split(" : ")[0].split(","):
                names.add(part.strip().lstrip("*"))
    return names


@pytest.mark.parametrize(("name", "obj"), _public(), ids=[n for n, _ in _public()])
def test_numpydoc(name, obj):
    doc = inspect.getdoc(obj)
    assert doc and doc.splitlines()[0].strip(), f"{name}: no summary line"
    sig = inspect.signature(obj)
    params = [
        p.name
        for p in sig.parameters.values()
        if p.name != "self" and p.kind is not p.VAR_POSITIONAL
    ]
    if inspect.isclass(obj) and params == ["kwargs"]:
        params = []  # nn.Module-style (*args, **kwargs) constructors
    if params:
        section = _section(doc, "Parameters")
        if section is None and inspect.isclass(obj):
            section = _section(doc, "Attributes")  # a dataclass's fields
        assert section is not None, f"{name}: no Parameters section"
        missing = set(params) - _documented(section)
        assert not missing, f"{name}: parameters not documented: {sorted(missing)}"
    if inspect.isfunction(obj) and sig.return_annotation not in (None, "None", sig.empty):
        assert _section(doc, "Returns") is not None or _section(doc, "Yields") is not None, (
            f"{name}: no Returns section"
        )


def test_section_parser_sees_a_missing_parameter():
    def f(a, b):
        """Summary.

        Parameters
        ----------
        a : int
            The a.
        """

    section = _section(inspect.getdoc(f), "Parameters")
    assert _documented(section) == {"a"}
