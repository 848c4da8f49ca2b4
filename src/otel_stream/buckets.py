"""Default histogram bucket boundaries, and the parser for overrides.

The boundaries are the reason this project exists: Prometheus' ``histogram_quantile``
interpolates linearly inside a bucket, so its error is bounded by the bucket's width
relative to its position. A geometric series with eight steps per decade (ratio
10**(1/8), about 1.33) keeps that error under 5 % for the reference workloads of
docs/metrics.md with about 40 boundaries; HTTP semconv's list ends at 10 s and reads every
long stream as "10 s". ``tests/test_buckets.py`` checks the fidelity the way Prometheus
computes it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

#: Mantissas of one decade, eight steps of about 1.33 each, rounded to readable values.
DECADE_8 = (1.0, 1.33, 1.78, 2.37, 3.16, 4.22, 5.62, 7.5)
#: Four steps per decade (ratio about 1.78), for histograms without a fidelity target.
DECADE_4 = (1.0, 1.78, 3.16, 5.62)


def geometric(low: float, high: float, mantissas: Sequence[float] = DECADE_8) -> tuple[float, ...]:
    """Boundaries from ``low`` to ``high`` (both included when they fall on the series)."""
    bounds: list[float] = []
    exponent = math.floor(math.log10(low)) - 1
    while True:
        scale = 10.0**exponent
        for mantissa in mantissas:
            value = float(f"{mantissa * scale:.6g}")
            if value > high * (1 + 1e-9):
                return tuple(bounds)
            if value >= low * (1 - 1e-9):
                bounds.append(value)
        exponent += 1


#: Time to first byte (and time to first token): 5 ms to 300 s.
TTFB_BUCKETS = (0.005, *geometric(0.0075, 300.0), 300.0)
#: Stream duration: 50 ms to 2 h.
DURATION_BUCKETS = (0.05, *geometric(0.0562, 7200.0), 7200.0)
#: Max chunk gap and send wait: 1 ms to 120 s.
GAP_BUCKETS = (*geometric(0.001, 100.0, DECADE_4), 120.0)
#: Chunks per stream.
CHUNKS_BUCKETS = (
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1_000.0,
    2_000.0,
    5_000.0,
    10_000.0,
    20_000.0,
    50_000.0,
    100_000.0,
    1_000_000.0,
)
#: Body bytes per stream: 64 B to 1 GiB in steps of 4.
BODY_SIZE_BUCKETS = tuple(float(64 * 4**i) for i in range(13))
#: Time per output token: 1 ms to 10 s.
TIME_PER_OUTPUT_TOKEN_BUCKETS = geometric(0.001, 10.0)

MAX_BOUNDARIES = 45


def parse_buckets(text: str) -> tuple[float, ...]:
    """Parse a comma-separated list of boundaries in seconds.

    Raises:
        ValueError: the list is empty, holds a non-number, a non-finite or negative
            value, is not strictly increasing, or has more than 200 boundaries.
    """
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError("empty list")
    values = tuple(float(part) for part in parts)
    validate_buckets(values)
    return values


def validate_buckets(values: Sequence[float]) -> tuple[float, ...]:
    """Check that ``values`` is a usable list of boundaries and return it as a tuple."""
    result = tuple(float(value) for value in values)
    if not result:
        raise ValueError("empty list")
    if len(result) > 200:
        raise ValueError(f"{len(result)} boundaries, at most 200")
    for value in result:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"boundary {value!r} is not a finite, non-negative number")
    if any(b <= a for a, b in itertools.pairwise(result)):
        raise ValueError("boundaries must be strictly increasing")
    return result
