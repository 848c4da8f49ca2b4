"""What ``StreamingInstrumentor`` instruments, in the form ``opentelemetry-instrument`` reads.

No single library is required: the instrumentor patches whichever of these servers and
frameworks the process imports, so ``_instruments`` (every entry must be installed) is
empty and ``_instruments_any`` lists the supported versions for reference.
"""

from __future__ import annotations

_instruments: tuple[str, ...] = ()

_instruments_any: tuple[str, ...] = (
    "starlette >= 0.40",
    "fastapi >= 0.115",
    "uvicorn >= 0.30",
    "hypercorn >= 0.17",
    "granian >= 2.0",
    "daphne >= 4.0",
    "flask >= 2.2",
    "django >= 4.2",
)
