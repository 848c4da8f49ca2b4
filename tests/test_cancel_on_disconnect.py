"""cancel_on_disconnect stops an abandoned generation, even when the app never reads receive."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from otel_stream import StreamingMiddleware
from tests.apps import start
from tests.rawclient import abort, open_request, read_until
from tests.servers import SERVERS, serve, wait_until
from tests.telemetry_harness import Telemetry

STEPS = 100


def generator_app(progress: list[float], stopped: list[float]) -> Any:
    """``STEPS`` steps of 10 ms (1 s of "GPU time"); ``stopped`` gets the time it was cancelled."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await start(send, b"text/event-stream")
        try:
            for _ in range(STEPS):
                await send(
                    {"type": "http.response.body", "body": b"data: t\n\n", "more_body": True}
                )
                progress.append(time.monotonic())
                await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            stopped.append(time.monotonic())
            raise

    return app


def disconnect_clock(app: Any, seen: list[float]) -> Any:
    """``app`` as the server calls it; ``seen`` gets the time the server's receive
    returned ``http.disconnect`` (the server's own disconnect event)."""

    async def timed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def timed_receive() -> Any:
            message = await receive()
            if message["type"] == "http.disconnect":
                seen.append(time.monotonic())
            return message

        await app(scope, timed_receive, send)

    return timed


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("cancel", [True, False])
def test_disconnect_cancels_the_app_only_when_asked(
    telemetry: Telemetry, server: str, cancel: bool
) -> None:
    progress: list[float] = []
    stopped: list[float] = []
    disconnect_seen: list[float] = []
    app = StreamingMiddleware(
        generator_app(progress, stopped), cancel_on_disconnect=cancel, **telemetry.providers
    )
    with serve(disconnect_clock(app, disconnect_seen), server) as url:
        sock = open_request(url + "/")
        read_until(sock, b"data: t\n\n")
        abort(sock)
        if cancel:
            assert wait_until(lambda: len(stopped) == 1, timeout=5)
            assert len(progress) < STEPS / 2  # the generation stopped early
            # Both times are the server's: cancelled within 100 ms of its disconnect event.
            (seen_at,) = disconnect_seen
            assert stopped[0] - seen_at < 0.1
        else:
            assert wait_until(lambda: len(progress) == STEPS, timeout=5)  # ran to the end
            assert stopped == []
        assert wait_until(lambda: telemetry.counts("http.server.stream.terminations"))
    reasons = telemetry.counts("http.server.stream.terminations", "http.stream.termination_reason")
    assert reasons == {("client_disconnect",): 1}
