"""A raw HTTP/1.1 client over a socket, for closing a connection at an exact moment."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit


def open_request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=5)
    lines = [f"{method} {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def read_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    """Read until ``marker`` has arrived; returns everything read."""
    received = b""
    deadline = time.monotonic() + timeout
    while marker not in received:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}; got {received!r}")
        received += chunk
    return received


def abort(sock: socket.socket) -> None:
    """Close at once (RST-free close; the server sees EOF)."""
    sock.close()
