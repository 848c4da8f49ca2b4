"""Real ASGI servers on loopback for tests: uvicorn or hypercorn, in a thread of this process.

The server runs its own event loop in a background thread, so the test talks to it with
ordinary clients (httpx, raw sockets) and reads the in-memory exporters directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

SERVERS = ("uvicorn", "hypercorn")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(app: Any, server: str = "uvicorn", **options: Any) -> Iterator[str]:
    """Serve ``app`` on a free loopback port; yields its base URL, stops on exit."""
    port = free_port()
    if server == "uvicorn":
        yield from _uvicorn(app, port, **options)
    elif server == "hypercorn":
        yield from _hypercorn(app, port, **options)
    else:
        raise ValueError(server)


def _uvicorn(app: Any, port: int, **options: Any) -> Iterator[str]:
    import uvicorn

    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _hypercorn(app: Any, port: int, **options: Any) -> Iterator[str]:
    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.loglevel = "WARNING"
    config.graceful_timeout = 1
    for key, value in options.items():
        setattr(config, key, value)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        await hypercorn_serve(app, config, shutdown_trigger=stop.wait, mode="asgi")

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("hypercorn did not start")
        time.sleep(0.005)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` passes; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return bool(value)
        time.sleep(interval)
