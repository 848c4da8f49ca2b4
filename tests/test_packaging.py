"""The lower bounds pyproject.toml declares are the releases .ci/lowest.txt tests."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

LOWEST = Path(__file__).resolve().parent.parent / ".ci" / "lowest.txt"


def pins() -> dict[str, str]:
    pinned = {}
    for line in LOWEST.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pinned[name.strip()] = version.strip()
    return pinned


def test_every_runtime_lower_bound_is_the_release_ci_pins() -> None:
    pinned = pins()
    runtime = [
        Requirement(text)
        for text in importlib.metadata.requires("otel-stream") or []
        if "extra ==" not in text
    ]
    assert runtime
    for requirement in runtime:
        (bound,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        assert requirement.name in pinned, f"{requirement.name} is not in {LOWEST.name}"
        assert Version(bound) == Version(pinned[requirement.name]), requirement.name
