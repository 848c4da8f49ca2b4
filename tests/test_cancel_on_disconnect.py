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


def generator_app(progress: list[float], stopped: list[str]) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await start(send, b"text/event-stream")
        try:
            for _ in range(100):  # 1 s of "GPU time" if nobody stops it
                await send(
                    {"type": "http.response.body", "body": b"data: t\n\n", "more_body": True}
                )
                progress.append(time.monotonic())
                await asyncio.sleep(0.01)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            stopped.append("cancelled")
            raise

    return app


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("cancel", [True, False])
def test_disconnect_cancels_the_app_only_when_asked(
    telemetry: Telemetry, server: str, cancel: bool
) -> None:
    progress: list[float] = []
    stopped: list[str] = []
    app = StreamingMiddleware(
        generator_app(progress, stopped), cancel_on_disconnect=cancel, **telemetry.providers
    )
    with serve(app, server) as url:
        sock = open_request(url + "/")
        read_until(sock, b"data: t\n\n")
        abort(sock)
        closed_at = time.monotonic()
        if cancel:
            assert wait_until(lambda: stopped == ["cancelled"], timeout=5)
            assert max(progress) - closed_at < 0.1  # stopped within 100 ms of the close
        else:
            assert wait_until(lambda: len(progress) == 100, timeout=5)  # ran to the end
            assert stopped == []
        assert wait_until(lambda: telemetry.counts("http.server.stream.terminations"))
    reasons = telemetry.counts("http.server.stream.terminations", "http.stream.termination_reason")
    assert reasons == {("client_disconnect",): 1}
