"""How a request ended: the values of ``http.stream.termination_reason``.

The reason is decided once, when the exchange ends, from what the middleware saw:

* ``completed``: the final body message went out (and the trailers, if announced).
* ``client_disconnect``: an ``http.disconnect`` was received, or ``send`` raised, or the
  app returned without the final message after a disconnect was seen.
* ``app_error``: the app raised (anything but cancellation).
* ``cancelled``: the app's task was cancelled and no disconnect was seen; or the app was
  stopped from outside by ``SystemExit`` or ``KeyboardInterrupt`` (a WSGI worker the
  server aborts, for its timeout or its shutdown, raises ``SystemExit`` in the app).
* ``incomplete``: the app returned normally without the final message, and no
  disconnect was seen; or a payload format with an end marker ended without it.
"""

from __future__ import annotations

COMPLETED = "completed"
CLIENT_DISCONNECT = "client_disconnect"
APP_ERROR = "app_error"
CANCELLED = "cancelled"
INCOMPLETE = "incomplete"

REASONS = (COMPLETED, CLIENT_DISCONNECT, APP_ERROR, CANCELLED, INCOMPLETE)

PHASE_WAITING = "waiting"
PHASE_STREAMING = "streaming"


def is_cancellation(error: BaseException) -> bool:
    """True for asyncio's and trio's cancellation exceptions."""
    name = type(error).__name__
    return name in ("CancelledError", "Cancelled")


def is_stop(error: BaseException) -> bool:
    """True for the exceptions that stop a process' work from outside (a WSGI server
    aborting a worker raises ``SystemExit`` wherever its thread is)."""
    return isinstance(error, (SystemExit, KeyboardInterrupt))


def classify(
    *,
    error: BaseException | None,
    response_complete: bool,
    disconnected: bool,
    send_failed: bool,
    payload_truncated: bool = False,
) -> str:
    """The termination reason of one exchange."""
    if disconnected or send_failed:  # seen before the response completed: the tail was lost
        return CLIENT_DISCONNECT
    if error is not None:
        return CANCELLED if is_cancellation(error) or is_stop(error) else APP_ERROR
    if not response_complete or payload_truncated:
        return INCOMPLETE
    return COMPLETED
