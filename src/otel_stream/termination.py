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

An outgoing call (the client side) ends as its caller read it (:func:`classify_client`):

* ``completed``: the caller read the end of the body, or closed it (or was cancelled or
  stopped) after an LLM format's end marker.
* ``consumer_closed``: the caller closed or dropped the response, or was cancelled or
  stopped (``KeyboardInterrupt``, ``SystemExit``), before the end.
* ``server_disconnect``: the connection ended before the body did.
* ``error``: any other failure of the call or of a read.
* ``incomplete``: the body ended but an LLM format's end marker never came.
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


# Outgoing calls (the client side) ---------------------------------------------------

CONSUMER_CLOSED = "consumer_closed"
SERVER_DISCONNECT = "server_disconnect"
ERROR = "error"

CLIENT_REASONS = (COMPLETED, CONSUMER_CLOSED, SERVER_DISCONNECT, ERROR, INCOMPLETE)

#: Exceptions of httpx, httpx2, aiohttp and the socket layer that mean the connection
#: ended before the body did (compared by class name: one table for every client).
_SERVER_DISCONNECTS = frozenset(
    {
        "RemoteProtocolError",  # httpx: "peer closed connection without sending complete ..."
        "ReadError",  # httpx: the socket read failed (reset)
        "ClientPayloadError",  # aiohttp: "Response payload is not completed"
        "ServerDisconnectedError",
        "ClientConnectionResetError",
        "ConnectionResetError",
        "BrokenPipeError",
        "IncompleteRead",
    }
)


def is_server_disconnect(error: BaseException) -> bool:
    """True when ``error`` (or the error it was raised from) says the server hung up early."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 4:
        if type(current).__name__ in _SERVER_DISCONNECTS:
            return True
        current = current.__cause__
        seen += 1
    return False


def classify_client(
    *,
    error: BaseException | None,
    body_complete: bool,
    payload_truncated: bool = False,
    payload_whole: bool = False,
) -> str:
    """The termination reason of one outgoing call, as its caller read it.

    Without an error and before the end of the body, the caller closed the response.
    ``payload_whole`` is true when an LLM format's end marker was read: a caller that
    closes the response after it (the OpenAI SDK does, without draining the body) got
    the whole answer. A caller cancelled or stopped from outside stopped reading, as one
    that closes: before the end it is ``consumer_closed``, after the end marker (a
    relay whose own caller left at ``data: [DONE]``, cancelled while it waited for the
    end of the upstream's body) it got the whole answer too.
    """
    if error is not None and not (is_cancellation(error) or is_stop(error)):
        return SERVER_DISCONNECT if is_server_disconnect(error) else ERROR
    if not body_complete:
        return COMPLETED if payload_whole else CONSUMER_CLOSED
    return INCOMPLETE if payload_truncated else COMPLETED
