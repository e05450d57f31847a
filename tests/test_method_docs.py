"""The method docstrings' fixed shape (issue 15), checked for every registered method.

The docstring of the module that defines a method's class ends with two labelled paragraphs:

    Implements: <short name as in docs/references.md>, <section / equation / algorithm>.

    Deviates from the authors' code: <each deviation, repository named> | none known (...).

and the first names at least one short name of the first column of a table of
``docs/references.md``. The cases come from ``METHODS``, so a newly registered method is
checked with nothing to add here.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest
import torch

from trainables.methods import METHODS
from trainables.methods.base import LossWeighting

REFERENCES = Path(__file__).resolve().parents[1] / "docs" / "references.md"
IMPLEMENTS = "Implements:"
DEVIATES = "Deviates from the authors' code:"


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def reference_short_names(text: str) -> set[str]:
    """The first-column cells of every table body in references.md (headers left out)."""
    names: set[str] = set()
    in_body = False
    for line in text.splitlines():
        if not line.strip().startswith("|"):
            in_body = False
            continue
        if re.fullmatch(r"[\s|:-]+", line):  # the separator: the rows after it are the body
            in_body = True
            continue
        if in_body and _cells(line)[0]:
            names.add(_cells(line)[0])
    return names


def paragraphs(doc: str) -> list[str]:
    """Blank-line separated paragraphs, each with its whitespace collapsed to single spaces."""
    return [" ".join(p.split()) for p in re.split(r"\n[ \t]*\n", doc.strip()) if p.strip()]


def shape_problems(doc: str | None, short_names: set[str]) -> list[str]:
    """What keeps ``doc`` from the fixed shape (empty: it has it)."""
    if not doc or not doc.strip():
        return ["no module docstring"]
    problems = []
    lines = doc.splitlines()
    n_implements = sum(line.startswith(IMPLEMENTS) for line in lines)
    if n_implements != 1:
        problems.append(f"{n_implements} lines start with {IMPLEMENTS!r}, expected 1")
    paras = paragraphs(doc)
    n_deviates = sum(p.startswith(DEVIATES) for p in paras)
    if n_deviates != 1:
        problems.append(f"{n_deviates} paragraphs start with {DEVIATES!r}, expected 1")
    if len(paras) < 2 or not paras[-2].startswith(IMPLEMENTS) or not paras[-1].startswith(DEVIATES):
        problems.append(f"the docstring does not end with the {IMPLEMENTS!r} and {DEVIATES!r} paragraphs")
        return problems
    implements, deviates = paras[-2][len(IMPLEMENTS):].strip(), paras[-1][len(DEVIATES):].strip()
    if not implements:
        problems.append(f"{IMPLEMENTS!r} is empty")
    if not deviates:
        problems.append(f"{DEVIATES!r} is empty")
    if not any(name in implements for name in short_names):
        problems.append(f"{IMPLEMENTS!r} names no short name of docs/references.md: {implements!r}")
    return problems


def module_doc(method_name: str) -> str | None:
    return sys.modules[METHODS.get(method_name).__module__].__doc__


@pytest.fixture(scope="module")
def short_names() -> set[str]:
    return reference_short_names(REFERENCES.read_text(encoding="utf-8"))


def test_references_parse_to_the_short_names(short_names: set[str]) -> None:
    # the seed codes, a method paper, a library; never a header cell or a separator
    assert {"`000`", "`001`", "`002`", "`003`", "`004`"} <= short_names
    assert "Liu et al. 2021 (CAGrad)" in short_names
    assert "TorchJD" in short_names
    assert not {"Code", "Short name in the code", "---"} & short_names


@pytest.mark.parametrize("method_name", METHODS.names())
def test_method_module_docstring_has_the_fixed_shape(method_name: str, short_names: set[str]) -> None:
    problems = shape_problems(module_doc(method_name), short_names)
    assert not problems, f"{METHODS.get(method_name).__module__}: " + "; ".join(problems)


def _throwaway(doc: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Register a method whose class lives in a fresh module with docstring ``doc``."""
    module = types.ModuleType("trainables.methods._throwaway_for_docs", doc)

    class Throwaway(LossWeighting):
        name = "throwaway_for_docs"
        summary = "a method that exists only in this test"
        paper = "none"

        def combine(self, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return losses.sum(), torch.ones_like(losses.detach())

    Throwaway.__module__ = module.__name__
    module.Throwaway = Throwaway
    monkeypatch.setitem(sys.modules, module.__name__, module)
    METHODS.register(Throwaway.name, Throwaway)
    return Throwaway.name


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch):
    """Temporary registrations, removed from METHODS after the test whatever its outcome."""
    names: list[str] = []
    yield lambda doc: names.append(_throwaway(doc, monkeypatch)) or names[-1]
    for name in names:
        del METHODS._entries[name]


def test_a_registered_method_without_the_shape_fails(registered, short_names: set[str]) -> None:
    name = registered("Free-form text that cites Liu et al. 2021 (CAGrad) but has no labelled paragraphs.")
    problems = shape_problems(module_doc(name), short_names)
    assert any(IMPLEMENTS in p for p in problems)
    assert any(DEVIATES in p for p in problems)


def test_the_shape_with_an_unknown_paper_or_an_empty_deviation_fails(registered, short_names: set[str]) -> None:
    unknown = registered(
        "Free text.\n\nImplements: Somebody et al. 2031, eq. 1.\n\nDeviates from the authors' code: none known.\n"
    )
    assert any("names no short name" in p for p in shape_problems(module_doc(unknown), short_names))
    assert any(
        "is empty" in p
        for p in shape_problems("Text.\n\nImplements: `002` §3.5.\n\nDeviates from the authors' code:\n", short_names)
    )
    # the labels must close the docstring, in this order
    swapped = "Text.\n\nDeviates from the authors' code: none known.\n\nImplements: `002` §3.5.\n"
    assert shape_problems(swapped, short_names)


def test_the_shape_passes_when_complete(registered, short_names: set[str]) -> None:
    name = registered(
        "Free text.\n\nImplements: Liu et al. 2021 (CAGrad), eq. 3 and its dual.\n\n"
        "Deviates from the authors' code: none known (compared with Cranial-XIX/CAGrad).\n"
    )
    assert shape_problems(module_doc(name), short_names) == []
    assert name in METHODS


def test_the_throwaway_registrations_are_gone() -> None:
    # runs after the tests above (file order): their fixture removed what they registered
    assert "throwaway_for_docs" not in METHODS
