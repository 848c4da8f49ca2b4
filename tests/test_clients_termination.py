"""The client termination reasons, decided from what the adapter saw (pure)."""

from __future__ import annotations

import asyncio

import pytest

from otel_stream import termination
from otel_stream.exchange import Exchange


class RemoteProtocolError(Exception):
    """Named as httpx's: the reasons compare class names, one table for every client."""


def raised_from(error: BaseException, cause: BaseException) -> BaseException:
    try:
        raise error from cause
    except BaseException as raised:
        return raised


@pytest.mark.parametrize(
    ("error", "body_complete", "truncated", "whole", "reason"),
    [
        (None, True, False, False, "completed"),
        (None, True, True, False, "incomplete"),
        (None, False, False, False, "consumer_closed"),
        (None, False, False, True, "completed"),  # closed after [DONE]
        (asyncio.CancelledError(), False, False, False, "consumer_closed"),
        (KeyboardInterrupt(), False, False, False, "consumer_closed"),  # Ctrl-C mid-read
        (SystemExit(), False, False, False, "consumer_closed"),
        # a relay cancelled in its next read after passing [DONE] on: the whole answer
        (asyncio.CancelledError(), False, False, True, "completed"),
        (KeyboardInterrupt(), True, False, False, "completed"),  # after the body's end
        (asyncio.CancelledError(), True, True, False, "incomplete"),
        (RemoteProtocolError(), False, False, False, "server_disconnect"),
        (ConnectionResetError(), False, False, False, "server_disconnect"),
        (
            raised_from(RuntimeError("wrapped"), RemoteProtocolError()),
            False,
            False,
            False,
            "server_disconnect",
        ),
        (TimeoutError(), False, False, False, "error"),
        (ValueError(), True, False, True, "error"),
    ],
)
def test_classify_client(
    error: BaseException | None, body_complete: bool, truncated: bool, whole: bool, reason: str
) -> None:
    assert (
        termination.classify_client(
            error=error,
            body_complete=body_complete,
            payload_truncated=truncated,
            payload_whole=whole,
        )
        == reason
    )
    assert reason in termination.CLIENT_REASONS


def test_the_exchange_decides_from_its_phase() -> None:
    exchange = Exchange(0.0)
    exchange.first_byte(0.1, 0.1, 10, more=True)
    assert exchange.client_outcome(None) == "consumer_closed"
    exchange.complete(0.2, 0.2)
    assert exchange.client_outcome(None) == "completed"
    assert exchange.client_outcome(None, payload_truncated=True) == "incomplete"


def handling_a_reset() -> None:
    try:
        raise ConnectionResetError
    except ConnectionResetError:
        raise ValueError("while handling") from None


def test_a_cause_chain_is_followed_only_through_causes() -> None:
    with pytest.raises(ValueError, match="while handling") as caught:
        handling_a_reset()
    assert not termination.is_server_disconnect(caught.value)  # a context is not a cause
