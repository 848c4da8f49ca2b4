"""Wrapping library functions with wrapt, and putting them back: what both instrumentors do.

Each instrumentor resolves its own targets (``(owner, attribute, wrapper)``) when a
module is imported; applying them and undoing them is written once, here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import wrapt

logger = logging.getLogger("otel_stream")

#: (owner, attribute, the original function, the wrapper installed in its place)
Applied = tuple[Any, str, Any, Any]


def wrap(module_name: str, targets: Iterable[tuple[Any, str, Callable[..., Any]]]) -> list[Applied]:
    """Wrap each target that exists; returns what was applied, for :func:`unwrap`."""
    applied: list[Applied] = []
    for owner, attribute, wrapper in targets:
        original = vars(owner).get(attribute) if owner is not None else None
        if not callable(original):
            logger.debug("otel-stream: %s.%s not found; not patched", module_name, attribute)
            continue
        wrapt.wrap_function_wrapper(owner, attribute, wrapper)
        applied.append((owner, attribute, original, vars(owner)[attribute]))
    return applied


def unwrap(applied: Iterable[list[Applied]]) -> None:
    """Put back every original still covered by our wrapper (a later patch stays)."""
    for patches in applied:
        for owner, attribute, original, wrapper in patches:
            if vars(owner).get(attribute) is wrapper:
                setattr(owner, attribute, original)
            else:
                logger.debug("otel-stream: %r.%s was re-patched; left as is", owner, attribute)
