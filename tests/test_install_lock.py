"""The lock behind a reproducible install: ``constraints.txt`` pins every package that
``searcher[test]`` needs, inside ``pyproject.toml``'s ranges, and this environment is the
locked one (so a green suite means the pinned set passed, not whatever pip found that day)."""

from __future__ import annotations

import importlib.metadata as metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
#: pip and the build backend come with the venv, not with the package's requirements.
NOT_LOCKED = {"pip"}


def canonical(name: str) -> str:
    """PEP 503 name normalization (``Torch_Geometric`` and ``torch-geometric`` are one package)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not an exact NAME==VERSION pin"
            pins[canonical(name)] = version
    return pins


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]


def needed_closure() -> set[str]:
    """Every distribution ``searcher[test]`` needs on this platform, read from the installed
    packages' own metadata (a requirement counts where its marker holds, for the extras the
    package was asked with)."""
    needed: set[str] = set()
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = project_requirements()
    while todo:
        req = todo.pop()
        key = (canonical(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        needed.add(key[0])
        extras = {""} | set(req.extras)
        for line in metadata.distribution(req.name).requires or []:
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({"extra": extra}) for extra in extras):
                todo.append(dep)
    return needed


def test_every_pin_is_exact_and_inside_the_projects_ranges():
    pins = read_lock()
    for req in project_requirements():
        name = canonical(req.name)
        assert name in pins, f"{req.name} is a dependency in pyproject.toml but not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}")


def test_the_lock_covers_everything_searcher_needs_on_this_platform():
    pins = read_lock()
    missing = sorted(set(needed_closure()) - set(pins) - NOT_LOCKED)
    assert not missing, f"needed but not pinned in constraints.txt (regenerate it, see its header): {missing}"


def test_this_environment_is_the_locked_one():
    """CI and the README install with ``-c constraints.txt``: every locked package present here
    has the pinned version (a ``+cpu`` local build of torch matches its public version)."""
    drift = []
    for name, version in read_lock().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a pin for another platform's package (e.g. CUDA wheels) is not installed there
        if not SpecifierSet(f"=={version}").contains(installed, prereleases=True):
            drift.append(f"{name} {installed} (locked {version})")
    assert not drift, "installed without the lock? pip install -c constraints.txt -e '.[test]': " + ", ".join(drift)


def test_canonical_names_and_local_builds():
    assert canonical("Torch_Geometric") == canonical("torch.geometric") == "torch-geometric"
    assert SpecifierSet("==2.14.1").contains("2.14.1+cpu")
    assert not SpecifierSet("==2.14.1").contains("2.14.2")
