"""Wrapping library functions with wrapt, and putting them back: what both instrumentors do.

Each instrumentor resolves its own targets (``(owner, attribute, wrapper)``) when a
module is imported; applying them (now, or on import through wrapt's post-import hooks)
and undoing them is written once, here (:class:`Patcher`).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable
from types import ModuleType
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


#: What an instrumentor wraps in one module: (owner, attribute, wrapper).
Target = tuple[Any, str, Callable[..., Any]]


class Patcher:
    """The patches of one instrumentor: applied when it is active, to each of its modules
    already imported and, through an import hook, to each imported later; undone at once.

    Args:
        resolve: The targets of an imported module (a failure leaves it unpatched).
        active: Whether the instrumentor is instrumenting now (read under ``lock``).
    """

    def __init__(
        self, resolve: Callable[[ModuleType], Iterable[Target]], active: Callable[[], bool]
    ) -> None:
        self.resolve = resolve
        self.active = active
        #: Held by the instrumentor while it changes what ``active`` reads.
        self.lock = threading.RLock()
        #: module name -> what was applied to it
        self.patched: dict[str, list[Applied]] = {}
        self.hooked: set[str] = set()

    def patch_module(self, module: ModuleType) -> None:
        """Apply the patches of ``module`` if the instrumentor is active; idempotent."""
        name = module.__name__
        with self.lock:
            if not self.active() or name in self.patched:
                return
            try:
                targets = list(self.resolve(module))
            except Exception as error:  # an unknown version of the library
                logger.debug("otel-stream: %s not patched (%s)", name, error)
                targets = []
            self.patched[name] = wrap(name, targets)

    def patch(self, names: Iterable[str]) -> None:
        """Patch each of ``names`` imported already, and each one imported later.

        Called without ``lock`` held: the import hooks are registered outside it, so an
        import in another thread running a hook never waits for a lock held here while
        this thread waits for wrapt's.
        """
        names = list(names)
        with self.lock:
            for name in names:
                module = sys.modules.get(name)
                if module is not None:
                    self.patch_module(module)
        for name in names:
            if name not in self.hooked:
                self.hooked.add(name)
                wrapt.register_post_import_hook(self.patch_module, name)

    def unpatch(self) -> None:
        """Put back everything applied (see :func:`unwrap`)."""
        with self.lock:
            unwrap(self.patched.values())
            self.patched.clear()
