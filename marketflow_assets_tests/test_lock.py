"""requirements.lock (``make lock``, used by ``make install``) agrees with pyproject.toml, and the
environment the tests run in is the locked one."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, tuple[str, Marker | None]]:
    """name -> (pinned version, environment marker) of every line of the lock."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"not pinned in the lock: {line}"
        pins[_norm(req.name)] = (spec.version, req.marker)
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in ("dev", "bench"):
        reqs += project["optional-dependencies"][extra]
    return [Requirement(r) for r in reqs]


def test_every_declared_requirement_is_locked_at_a_version_it_allows():
    pins = locked()
    assert len(pins) > 100
    wrong = []
    for req in declared():
        if req.marker is not None and not req.marker.evaluate():
            continue
        pin = pins.get(_norm(req.name))
        if pin is None:
            wrong.append(f"{req} is not in requirements.lock")
        elif not req.specifier.contains(pin[0], prereleases=True):
            wrong.append(f"{req} does not allow the locked {req.name}=={pin[0]}")
        for extra in req.extras:  # e.g. pyspark[connect]: its extra's requirements too
            for dep in metadata.requires(req.name) or []:
                dep_req = Requirement(dep)
                if dep_req.marker is not None and dep_req.marker.evaluate({"extra": extra}):
                    if _norm(dep_req.name) not in pins:
                        wrong.append(f"{dep_req.name} (of {req.name}[{extra}]) is not locked")
    assert not wrong, "pyproject.toml and requirements.lock disagree (run `make lock`):\n" + (
        "\n".join(wrong)
    )


def test_the_installed_packages_are_the_locked_versions():
    differ = []
    for name, (version, marker) in sorted(locked().items()):
        if marker is not None and not marker.evaluate():
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            differ.append(f"{name}=={version} is not installed")
            continue
        if installed != version:
            differ.append(f"{name}: installed {installed}, locked {version}")
    assert not differ, "the environment is not the locked one (run `make install`):\n" + (
        "\n".join(differ)
    )
