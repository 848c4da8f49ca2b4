"""Seeing a client leave, even when the app never calls ``receive`` again.

Choices made on purpose (read before "fixing"):

* **Why ``send`` is not enough.** uvicorn's ``send`` returns silently after the client
  left, and Starlette's ``StreamingResponse`` then finishes normally, so only
  ``receive`` tells a disconnect from an ``incomplete`` response.
* **A watcher that steals nothing.** Once the app has read the whole request body (or
  has started its response), a task reads the server's ``receive`` on the app's behalf
  and hands every message it gets to the app, in order, on the app's next ``receive``:
  hypercorn delivers each message only once, so nothing may be lost. It never holds more
  than one request body chunk, so uploads keep their backpressure.
* **Started late, or never.** The watcher starts at the app's first pause after 1 ms
  (``call_later``): a response that completes within that time (most non-streaming
  responses, even those that yield to the event loop) is over before the callback runs
  and never pays for a task. A disconnect in that time is still seen: the watcher's
  first ``receive`` returns it.
* **Under trio** there is no task to start: when the app returns without finishing its
  response, ``receive`` is asked once, waiting at most 10 ms. That poll also runs under
  asyncio: a disconnect that arrives in the loop iteration in which the app returns has
  not reached the watcher yet.
"""

from __future__ import annotations

import asyncio
import collections
from time import perf_counter
from typing import Any

from otel_stream.asgi.types import Message, Receive
from otel_stream.exchange import Exchange, Phase
from otel_stream.guard import log_failure

DISCONNECT = "http.disconnect"
_REQUEST = "http.request"
#: How long after the request body (or the response start) the watcher starts.
WATCH_AFTER = 0.001
#: How long the poll at the end waits for a disconnect.
POLL_TIMEOUT = 0.01


class DisconnectWatcher:
    """The app's ``receive``, and the task that reads the server's on the app's behalf.

    Args:
        server_receive: The server's ``receive``.
        state: The exchange: told when the client leaves, asked whether the response is
            complete. (The state, not the middleware: no reference cycle.)
        cancel_on_disconnect: Cancel the app's task when the client leaves.
    """

    __slots__ = (
        "app_receiving",
        "app_task",
        "cancel_on_disconnect",
        "cancelled_app",
        "changed",
        "finished",
        "handle",
        "inbox",
        "request_body_complete",
        "seen_disconnect",
        "server_receive",
        "state",
        "task",
    )

    def __init__(
        self,
        server_receive: Receive,
        state: Exchange,
        cancel_on_disconnect: bool,
    ) -> None:
        self.server_receive = server_receive
        self.state = state
        self.cancel_on_disconnect = cancel_on_disconnect
        try:
            self.app_task: asyncio.Task[Any] | None = asyncio.current_task()
        except RuntimeError:  # not asyncio (trio): no watcher, see the module docstring
            self.app_task = None
        self.task: asyncio.Task[None] | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.inbox: collections.deque[Message] = collections.deque()
        self.changed: asyncio.Event | None = None
        self.app_receiving = 0
        self.request_body_complete = False
        self.seen_disconnect = False
        self.finished = False
        self.cancelled_app = False

    async def receive(self) -> Message:
        """The ``receive`` the app gets."""
        if self.task is not None:
            return await self._receive_from_inbox()
        self.app_receiving += 1
        try:
            message = await self.server_receive()
        finally:
            self.app_receiving -= 1
        self.observe(message)
        if self.request_body_complete:
            self.watch_soon()
        return message

    def observe(self, message: Message) -> None:
        kind = message.get("type")
        if kind == _REQUEST:
            if not message.get("more_body", False):
                self.request_body_complete = True
        elif kind == DISCONNECT:
            self.seen_disconnect = True
            self.state.left(perf_counter())

    def watch_soon(self) -> None:
        """Start the watcher at the app's first pause after ``WATCH_AFTER``."""
        if self.handle is not None or self.task is not None or self.app_task is None:
            return
        try:
            self.handle = self.app_task.get_loop().call_later(WATCH_AFTER, self._start)
        except Exception as error:
            log_failure("disconnect watcher", error)

    @property
    def done(self) -> bool:
        """The response is complete: there is nothing left to watch for."""
        return self.state.phase is Phase.COMPLETE

    def stop(self) -> None:
        """The app returned or raised: no more watching."""
        self.finished = True
        if self.handle is not None:
            self.handle.cancel()  # not started yet: it never will be
            self.handle = None
        task = self.task
        if task is not None and not task.done():
            task.cancel()
        self.task = None  # its cancelled frame refers to self: no reference cycle

    async def poll(self) -> None:
        """The app returned without finishing its response: did the client leave?"""
        try:
            if self.app_task is not None:
                message = await asyncio.wait_for(self.server_receive(), POLL_TIMEOUT)
            else:
                try:
                    import anyio
                except ImportError:
                    return
                message = None
                with anyio.move_on_after(POLL_TIMEOUT):
                    message = await self.server_receive()
            if message is not None:
                self.observe(message)
        except (asyncio.TimeoutError, TimeoutError):
            pass
        except Exception as error:
            log_failure("disconnect poll", error)

    # Inside ---------------------------------------------------------------------------

    def _start(self) -> None:
        self.handle = None
        if (
            self.task is not None
            or self.finished
            or self.app_receiving  # the app reads receive itself: it will see the disconnect
            or self.seen_disconnect
            or self.done
        ):
            return
        try:
            self.changed = asyncio.Event()
            self.task = asyncio.get_running_loop().create_task(self._watch())
        except Exception as error:
            log_failure("disconnect watcher", error)

    async def _watch(self) -> None:
        changed = self.changed
        assert changed is not None
        try:
            while True:
                message = await self.server_receive()
                self.inbox.append(message)
                changed.set()
                kind = message.get("type")
                if kind == DISCONNECT:
                    self.seen_disconnect = True
                    self.state.left(perf_counter())
                    if self.cancel_on_disconnect and self.app_task and not self.done:
                        self.cancelled_app = True
                        self.app_task.cancel()
                    return
                if kind == _REQUEST and message.get("more_body", False):
                    while self.inbox:  # hold at most one body chunk: keep upload backpressure
                        changed.clear()
                        await changed.wait()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log_failure("disconnect watcher", error)

    async def _receive_from_inbox(self) -> Message:
        changed = self.changed
        assert changed is not None
        while not self.inbox:
            if self.task is None or self.task.done():
                if self.seen_disconnect or self.done:
                    return {"type": DISCONNECT}
                return await self.server_receive()
            changed.clear()
            await changed.wait()
        message = self.inbox.popleft()
        changed.set()
        if message.get("type") == _REQUEST and not message.get("more_body", False):
            self.request_body_complete = True
        return message
