from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.telemetry_harness import Telemetry


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    harness = Telemetry()
    yield harness
    harness.shutdown()
