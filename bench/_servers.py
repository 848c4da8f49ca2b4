"""What the benchmark scripts share: waiting for a server process to accept connections."""

from __future__ import annotations

import socket
import subprocess
import time


def wait_ready(process: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> None:
    """Return once ``process`` accepts connections on ``port``; raise if it exits or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")
