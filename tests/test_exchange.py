"""The pure exchange state: phases, counters, how the peer leaving freezes them, the outcome."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from otel_stream import termination
from otel_stream.exchange import Exchange, Phase

SRC = Path(__file__).resolve().parents[1] / "src" / "otel_stream"


def otel_stream_imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", ["exchange.py", "termination.py"])
def test_the_exchange_state_knows_no_opentelemetry_asyncio_or_asgi(module: str) -> None:
    imported = otel_stream_imports(SRC / module)
    assert imported <= {
        "__future__",
        "enum",
        "contextvars",
        "otel_stream",
        "otel_stream.termination",
    }


def streamed(state: Exchange) -> Exchange:
    state.first_byte(1.0, 1.001, 10, more=True)
    state.chunk(1.5, 1.6, 5)
    state.chunk(3.0, 3.0, 5)
    return state


def test_a_stream_moves_from_waiting_to_streaming_to_complete() -> None:
    state = Exchange(0.0)
    assert state.phase is Phase.WAITING
    assert state.reported_phase == termination.PHASE_WAITING
    streamed(state)
    assert state.phase is Phase.STREAMING
    assert state.streamed
    state.complete(3.0, 3.2)
    assert state.phase is Phase.COMPLETE
    assert state.outcome(None) == termination.COMPLETED
    state.end(9.0)
    assert state.phase is Phase.ENDED
    assert (state.chunks, state.bytes) == (3, 20)
    assert state.max_chunk_gap == pytest.approx(1.5)
    assert state.send_wait == pytest.approx(0.001 + 0.1)
    assert state.ended_at == 3.2  # the final send returned then, not when the app returned
    assert state.stream_duration == pytest.approx(2.2)
    assert state.reported_phase == termination.PHASE_STREAMING


def test_a_single_message_response_is_not_a_stream() -> None:
    state = Exchange(0.0)
    state.first_byte(0.2, 0.25, 12, more=False)
    state.complete(0.2, 0.25)
    assert not state.streamed
    assert state.time_to_first_byte == pytest.approx(0.2)
    assert state.outcome(None) == termination.COMPLETED


def test_counts_freeze_when_the_peer_leaves() -> None:
    state = streamed(Exchange(0.0))
    state.left(3.5)
    state.chunk(4.0, 4.0, 100)  # sent after the client left: reached nobody
    assert state.outcome(None) == termination.CLIENT_DISCONNECT
    state.end(10.0)
    assert (state.chunks, state.bytes, state.ended_at) == (3, 20, 3.5)


def test_a_leave_seen_while_the_final_message_went_out_does_not_count() -> None:
    state = streamed(Exchange(0.0))
    state.left(3.1)  # reported during the final send, which started at 3.0
    state.complete(3.0, 3.2)
    assert state.outcome(None) == termination.COMPLETED


def test_a_leave_before_the_final_message_counts() -> None:
    state = streamed(Exchange(0.0))
    state.left(2.9)
    state.complete(3.0, 3.2)
    assert state.outcome(None) == termination.CLIENT_DISCONNECT


def test_a_failed_send_always_counts() -> None:
    state = streamed(Exchange(0.0))
    state.failed_send(3.1)
    state.complete(3.0, 3.2)
    assert state.outcome(None) == termination.CLIENT_DISCONNECT


def test_a_leave_after_the_response_is_complete_is_ignored() -> None:
    state = streamed(Exchange(0.0))
    state.complete(3.0, 3.2)
    state.left(5.0)
    assert not state.peer_left
    assert state.outcome(None) == termination.COMPLETED


@pytest.mark.parametrize(
    ("error", "complete", "truncated", "reason"),
    [
        (ValueError("x"), False, False, termination.APP_ERROR),
        (ValueError("x"), True, False, termination.APP_ERROR),
        (None, False, False, termination.INCOMPLETE),
        (None, True, True, termination.INCOMPLETE),
        (None, True, False, termination.COMPLETED),
    ],
)
def test_the_outcome_follows_termination_classify(
    error: BaseException | None, complete: bool, truncated: bool, reason: str
) -> None:
    state = streamed(Exchange(0.0))
    if complete:
        state.complete(3.0, 3.0)
    assert state.outcome(error, payload_truncated=truncated) == reason


def test_the_first_upstream_first_byte_wins() -> None:
    state = Exchange(0.0)
    state.upstream_first_byte(0.5, 0.4)
    state.upstream_first_byte(0.7, 0.1)
    assert (state.upstream_first_byte_at, state.upstream_time_to_first_byte) == (0.5, 0.4)
