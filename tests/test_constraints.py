"""The lock files tests/constraints/py3.X.txt (made by tests/lock.sh) match
pyproject.toml: every dependency of encfs and of each extra that applies to
that Python is pinned, at a version its specifier admits.  A dependency added
or tightened in pyproject.toml without `bash tests/lock.sh` fails here, before
tests/run.sh meets it as a resolver error or a slow unlocked resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
LOCKS = sorted((ROOT / "tests" / "constraints").glob("py3.*.txt"))
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;#]+)")


def _pins(path: Path) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        m = PIN.match(line)
        if m:
            pins[canonicalize_name(m.group(1))] = Version(m.group(2))
    return pins


def _requirements() -> list[tuple[str, Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, items in project.get("optional-dependencies", {}).items():
        reqs += [(f"[{extra}]", Requirement(r)) for r in items]
    return [(where, r) for where, r in reqs if canonicalize_name(r.name) != "encfs"]


def test_there_is_a_lock_per_supported_python():
    assert {p.stem for p in LOCKS} >= {"py3.10", "py3.11", "py3.12", "py3.13"}


@pytest.mark.parametrize("lock", LOCKS, ids=lambda p: p.stem)
def test_lock_pins_every_dependency_within_its_range(lock):
    python = lock.stem.removeprefix("py")
    env = {"python_version": python, "python_full_version": f"{python}.0",
           "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
           "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython"}
    pins = _pins(lock)
    problems = []
    for where, req in _requirements():
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        if name not in pins:
            problems.append(f"{req} ({where}) is not pinned")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{req} ({where}) but the lock pins {pins[name]}")
    assert not problems, f"{lock.name} is stale, run bash tests/lock.sh: " + "; ".join(problems)
